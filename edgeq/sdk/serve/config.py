"""The server's settings: one frozen config, validated on construction (standard library only)."""

from __future__ import annotations

from dataclasses import dataclass

from edgeq.errors import ConfigError


@dataclass(frozen=True)
class ServeConfig:
    """How `edgeq serve` listens, batches and refuses.

    Args:
        host: the address to bind; loopback by default (a device's model is not a public service unless
            the operator says so).
        port: TCP port (0 = any free port).
        max_batch: rows decoded together; None = the engine profile's batch maximum, or 8 for an ONNX
            Runtime engine (no profile). Never above the profile's maximum.
        max_queue: requests waiting for a slot beyond which new ones get 429 (the bound that keeps an
            overloaded device answering instead of queueing without end).
        batch_window_s: how long every batch waits for more requests once the first arrived (requests
            arriving together start together).
        merge_window_s: how long a batch waits, at most, for the clients of the batch that just ended to send
            their next requests (so that groups of clients merge instead of taking turns); only when they
            are expected, so a lone client never waits for it.
        default_max_tokens: completion budget when a request names none (capped by the context left).
        max_body_bytes: largest request body read.
        max_embedding_inputs: most texts in one /v1/embeddings request.
        prefix_cache: KV caches kept per model after one-row generations, so that a request whose prompt
            starts like a recent one (the next turn of a chat) prefills only the rest (0 = none kept).
        prefix_cache_tokens: tokens those caches are sized for, at most, all together (the memory bound:
            each token costs 2 x layers x 2 x kv-heads x head-dim x the KV dtype's bytes).
    """

    host: str = "127.0.0.1"
    port: int = 8000
    max_batch: int | None = None
    max_queue: int = 64
    batch_window_s: float = 0.002
    merge_window_s: float = 0.05
    default_max_tokens: int = 256
    max_body_bytes: int = 1 << 20
    max_embedding_inputs: int = 256
    prefix_cache: int = 4
    prefix_cache_tokens: int = 16384

    def __post_init__(self) -> None:
        if not self.host:
            raise ConfigError("host must be an address, e.g. 127.0.0.1")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port must be in 0..65535, got {self.port}")
        if self.max_batch is not None and self.max_batch < 1:
            raise ConfigError(f"max_batch must be >= 1, got {self.max_batch}")
        if self.max_queue < 1:
            raise ConfigError(f"max_queue must be >= 1, got {self.max_queue}")
        for name in ("batch_window_s", "merge_window_s"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"{name} must be in [0, 1] seconds, got {getattr(self, name)}")
        if self.prefix_cache < 0 or self.prefix_cache_tokens < 0:
            raise ConfigError("prefix_cache and prefix_cache_tokens must be >= 0")
        if self.default_max_tokens < 1 or self.max_body_bytes < 1024 or self.max_embedding_inputs < 1:
            raise ConfigError("default_max_tokens >= 1, max_body_bytes >= 1024 and max_embedding_inputs >= 1 "
                              "are required")


#: Rows per batch when the engine records no batch maximum (ONNX Runtime takes any batch).
DEFAULT_MAX_BATCH = 8
