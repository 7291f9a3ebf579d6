"""Token generation for causal LMs on any backend: prefill once, then one token per step with the KV cache.

The cache returned by a step (``present.N.*``) is fed back as the next step's ``past_key_values.N.*``;
the prompt is never re-run. Several prompts run as one batch, left-padded (padding masked out,
positions counted from each row's first real token). Sampling: greedy (temperature 0), temperature,
top-k, top-p; stop strings; streaming of text deltas with incremental detokenisation.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from edgeq.errors import ConfigError
from edgeq.sdk.bundle.graph_io import past_dtype
from edgeq.sdk.bundle.model_info import ModelInfo


@dataclass(frozen=True)
class GenerationConfig:
    """Decoding settings. ``temperature`` 0 means greedy; ``top_k`` 0 and ``top_p`` 1 disable those filters."""

    max_new_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    stop: tuple[str, ...] = ()
    seed: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "stop", tuple(self.stop))
        if self.max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ConfigError(f"temperature must be >= 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ConfigError(f"top_k must be >= 0, got {self.top_k}")
        if any(not s for s in self.stop):
            raise ConfigError("stop strings must be non-empty")


@dataclass
class GenerationResult:
    """One prompt's output, with timings (prefill covers the prompt, decode every later step)."""

    text: str
    token_ids: list[int]
    finish_reason: str  # "eos" | "stop" | "length"
    prompt_tokens: int
    prefill_s: float = 0.0
    decode_s: float = 0.0
    version: int | None = None
    # Added with the serving API (issue 16). finish_reason may also be "deadline" (the request's deadline
    # passed; text holds what was generated) or "cancelled" (Request.cancel / task.cancel()).
    #: prompt tokens dropped from the start by truncate="left" (prompt_tokens counts what was kept)
    truncated_tokens: int = 0
    #: seconds from submission until its batch started (waiting for a slot in the server's batcher)
    queue_s: float = 0.0
    #: seconds from submission until this row finished (queue + prefill + its decode steps)
    total_s: float = 0.0

    @property
    def decode_tokens_per_s(self) -> float:
        n = max(len(self.token_ids) - 1, 0)
        return n / self.decode_s if self.decode_s > 0 else 0.0


# -- sampling -----------------------------------------------------------------------------------------
def sample(logits: np.ndarray, cfg: GenerationConfig, rng: np.random.Generator) -> np.ndarray:
    """Next token per row of ``logits`` (batch, vocab)."""
    if cfg.temperature == 0.0:
        return logits.argmax(axis=-1)
    x = logits.astype(np.float64) / cfg.temperature
    if cfg.top_k and cfg.top_k < x.shape[-1]:
        kth = np.partition(x, -cfg.top_k, axis=-1)[:, -cfg.top_k][:, None]
        x = np.where(x < kth, -np.inf, x)
    x = x - x.max(axis=-1, keepdims=True)
    p = np.exp(x)
    p /= p.sum(axis=-1, keepdims=True)
    if cfg.top_p < 1.0:
        order = np.argsort(-p, axis=-1)
        sp = np.take_along_axis(p, order, axis=-1)
        # keep the smallest prefix whose mass reaches top_p (the first token always stays)
        drop = (np.cumsum(sp, axis=-1) - sp) >= cfg.top_p
        sp[drop] = 0.0
        p = np.zeros_like(p)
        np.put_along_axis(p, order, sp, axis=-1)
        p /= p.sum(axis=-1, keepdims=True)
    c = np.cumsum(p, axis=-1)
    u = rng.random((p.shape[0], 1)) * c[:, -1:]
    return np.minimum((c < u).sum(axis=-1), p.shape[-1] - 1)


# -- incremental text ---------------------------------------------------------------------------------
class TextStream:
    """Turns one row's token ids into text deltas, holding back what could be the start of a stop string."""

    def __init__(self, decode: Callable[[Sequence[int]], str], stop: tuple[str, ...]) -> None:
        self._decode = decode
        self.stop = stop
        self._hold = max((len(s) for s in stop), default=1) - 1
        self.ids: list[int] = []
        self._prefix = self._read = 0
        self.text = ""
        self._emitted = 0
        self.stopped = False

    def add(self, token: int) -> None:
        """Append a token; sets ``stopped`` and truncates ``text`` when a stop string appears."""
        self.ids.append(token)
        prefix = self._decode(self.ids[self._prefix : self._read])
        full = self._decode(self.ids[self._prefix :])
        if len(full) > len(prefix) and not full.endswith("\ufffd"):  # a complete character arrived
            start = max(len(self.text) - self._hold, 0)
            self.text += full[len(prefix) :]
            self._prefix, self._read = self._read, len(self.ids)
            for s in self.stop:
                at = self.text.find(s, max(start - len(s), 0))
                if at >= 0:
                    self.text, self.stopped = self.text[:at], True

    def delta(self, final: bool) -> str:
        """Text not yet handed out; before the end, keeps back a possible stop-string prefix."""
        end = len(self.text) if (final or self.stopped) else max(len(self.text) - self._hold, self._emitted)
        out = self.text[self._emitted : end]
        self._emitted = end
        return out


# -- the step loop -----------------------------------------------------------------------------------
class LmStepper:
    """Feeds and output indices for one LM backend, computed once (nothing rebuilt per step)."""

    def __init__(self, backend: object, info: ModelInfo) -> None:
        names = list(backend.input_names)  # type: ignore[attr-defined]
        outs = list(backend.output_names)  # type: ignore[attr-defined]
        self.backend, self.info = backend, info
        self.past_names = [n for n in names if n.startswith("past_key_values.")]
        self.present_idx = [outs.index("present." + n[len("past_key_values."):]) for n in self.past_names]
        self.logits_idx = outs.index("logits") if "logits" in outs else 0
        self.past_dtype = past_dtype(getattr(backend, "input_dtypes", {}))
        self.has_mask = "attention_mask" in names
        self.has_pos = "position_ids" in names
        self._infer = backend.infer  # type: ignore[attr-defined]

    def run(self, ids: np.ndarray, mask: np.ndarray, pos: np.ndarray, past: Sequence[np.ndarray] | None
            ) -> tuple[np.ndarray, list[np.ndarray]]:
        """One forward step: logits of the last position (batch, vocab) and the new KV cache."""
        feeds = {"input_ids": ids}
        if self.has_mask:
            feeds["attention_mask"] = mask
        if self.has_pos:
            feeds["position_ids"] = pos
        if past is None:
            shape = (ids.shape[0], self.info.num_key_value_heads, 0, self.info.head_dim)
            empty = np.zeros(shape, self.past_dtype)
            feeds.update({n: empty for n in self.past_names})
        else:
            feeds.update(zip(self.past_names, past))
        out = self._infer(feeds)
        return out[self.logits_idx][:, -1, :], [out[i] for i in self.present_idx]


@dataclass
class _Batch:
    ids: np.ndarray
    mask: np.ndarray
    pos: np.ndarray
    lengths: list[int] = field(default_factory=list)


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int) -> _Batch:
    """Left-pad prompts into (batch, max_len) ids, mask and positions (pads masked, at position 0)."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ConfigError("every prompt must encode to at least one token")
    n = max(len(p) for p in prompts)
    ids = np.full((len(prompts), n), pad_id, np.int64)
    mask = np.zeros((len(prompts), n), np.int64)
    for r, p in enumerate(prompts):
        ids[r, n - len(p) :] = p
        mask[r, n - len(p) :] = 1
    pos = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
    return _Batch(ids, mask, pos, [len(p) for p in prompts])


StepHook = Callable[[np.ndarray], None]


def generate_ids(
    stepper: LmStepper, prompts: Sequence[Sequence[int]], cfg: GenerationConfig, *, pad_id: int,
    done: np.ndarray, on_logits: StepHook | None = None,
) -> Iterator[tuple[np.ndarray, float]]:
    """Yield (tokens (batch,), seconds) per step; the first step's seconds include the prefill.

    The caller owns ``done`` (bool per row) and sets a row when it ends (EOS, stop string) before
    asking for the next step. Finished rows are fed a pad token (outputs ignored) so the batch stays
    rectangular. Stops when every row is done or after ``max_new_tokens`` steps.
    """
    rng = np.random.default_rng(cfg.seed)
    batch = left_pad(prompts, pad_id)
    t0 = time.perf_counter()
    logits, past = stepper.run(batch.ids, batch.mask, batch.pos, None)
    mask, pos = batch.mask, batch.pos[:, -1:]
    ones = np.ones((mask.shape[0], 1), np.int64)
    for step in range(cfg.max_new_tokens):
        if on_logits is not None:
            on_logits(logits)
        tokens = sample(logits, cfg, rng).astype(np.int64)
        tokens[done] = pad_id
        t1 = time.perf_counter()
        yield tokens, t1 - t0
        if done.all() or step == cfg.max_new_tokens - 1:
            return
        t0 = time.perf_counter()
        mask = np.concatenate([mask, ones], axis=1)
        pos = pos + 1
        logits, past = stepper.run(tokens[:, None], mask, pos, past)
