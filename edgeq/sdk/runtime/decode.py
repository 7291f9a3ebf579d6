"""Token generation for causal LMs on any backend: prefill once, then one token per step with the KV cache.

The cache a step writes (``present.N.*``) is the next step's ``past_key_values.N.*``; the prompt is never
re-run. On a backend with a binder the cache stays in device buffers allocated once per generation
(``KvCache``); otherwise the present arrays come back through ``infer`` and are fed back. Several prompts
run as one batch, left-padded (padding masked out, positions counted from each row's first real token).
Sampling: greedy (temperature 0), temperature, top-k, top-p; stop strings; streaming of text deltas with
incremental detokenisation.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from edgeq.errors import ConfigError, RuntimeErrorBase
from edgeq.sdk.bundle.graph_io import past_dtype
from edgeq.sdk.bundle.model_info import ModelInfo
from edgeq.sdk.runtime.backends.binding import Binder, HostBuffer
from edgeq.sdk.runtime.backends.cudart import ALIGN
from edgeq.sdk.runtime.sampling import TextStream, sample

__all__ = ["GenerationConfig", "GenerationResult", "LmStepper", "TextStream", "generate_ids", "prefill", "sample"]


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
    #: prompt tokens taken from a KV cache kept from an earlier generation (not prefilled again)
    cached_tokens: int = 0

    @property
    def decode_tokens_per_s(self) -> float:
        n = max(len(self.token_ids) - 1, 0)
        return n / self.decode_s if self.decode_s > 0 else 0.0


# -- the step loop -----------------------------------------------------------------------------------
class Step:
    """What one forward step leaves for the sampler: device-greedy tokens, if any, and the logits on demand."""

    __slots__ = ("tokens", "_logits", "_fetch")

    def __init__(self, tokens: np.ndarray | None, fetch: Callable[[], np.ndarray]) -> None:
        self.tokens = tokens
        self._logits: np.ndarray | None = None
        self._fetch = fetch

    def logits(self) -> np.ndarray:
        """The last position's logits (batch, vocab), fetched from the device on the first call only."""
        if self._logits is None:
            self._logits = self._fetch()
        return self._logits


class KvCache:
    """Every layer's past and present in two arenas that trade places each step (ping-pong).

    A step reads its past from one arena and the graph writes the present (past + new tokens) into the
    other, at the same offsets, so the next step's past is already in place: no copy, no allocation.
    Each arena is one buffer on the binder's device, sized per generation for ``batch × max_len``
    tokens and kept for the next one (it grows geometrically, never per step).
    """

    def __init__(self, binder: Binder, names: Sequence[tuple[str, str]], heads: int, head_dim: int,
                 dtype: np.dtype) -> None:
        self.binder, self.names = binder, list(names)
        self.heads, self.head_dim, self.dtype = heads, head_dim, np.dtype(dtype)
        self.arenas = (binder.new_buffer(), binder.new_buffer())
        self.slot = 0  # bytes per tensor in the current generation
        self.batch = self.length = 0
        self._flip = 0

    def start(self, batch: int, max_len: int) -> None:
        """Size the arenas for a generation of ``batch`` rows up to ``max_len`` tokens and empty the cache.

        A binder with shape limits gets arenas at those limits (allocated on the first generation only).
        """
        self.slot = self._slot(batch, max_len)
        self._place([arena.reserve(self.slot * len(self.names)) for arena in self.arenas], 0)
        self.batch, self.length, self.max_len = batch, 0, max_len

    def _slot(self, batch: int, max_len: int) -> int:
        b = self.binder
        if b.max_batch is not None and b.max_tokens is not None:
            if batch > b.max_batch or max_len > b.max_tokens:
                raise RuntimeErrorBase(
                    f"a generation of {batch} x {max_len} tokens exceeds the engine's limit of "
                    f"{b.max_batch} x {b.max_tokens}", hint="shorten the prompt or max_new_tokens, or split the batch")
            per = b.max_batch * self.heads * b.max_tokens * self.head_dim * self.dtype.itemsize
        else:
            per = batch * self.heads * max_len * self.head_dim * self.dtype.itemsize
        return (per + ALIGN - 1) // ALIGN * ALIGN

    def _place(self, bases: list[int], flip: int) -> None:
        # tensor i lives at the same offset in both arenas: [arena of the past][i] for each parity
        self._ptrs = [[(bases[f] + i * self.slot, bases[1 - f] + i * self.slot) for i in range(len(self.names))]
                      for f in (0, 1)]
        self._flip = flip

    def relayout(self, keep: int, max_len: int) -> bool:
        """Keep the first ``keep`` cached tokens of every row, in arenas that hold ``max_len``: what a chat
        session's next turn needs (its common prefix with the last one, room for the new prompt and reply).

        A past tensor is laid out (batch, heads, length, dim), so cutting or growing it moves every head's
        rows: they are copied into the other arena (the one the next present goes to), which then holds the
        past. Host memory only; False on a device buffer (the caller prefills again). A cut to 0 is free.
        """
        if not 0 <= keep <= self.length:
            raise ConfigError(f"cannot keep {keep} of {self.length} cached tokens")
        cap = self.slot // max(self.batch * self.heads * self.head_dim * self.dtype.itemsize, 1)
        if self.binder.max_tokens is not None and self.binder.max_batch is not None:
            cap = self.binder.max_tokens
        if keep == 0:
            self.start(self.batch, max_len)
            return True
        if keep == self.length and max_len <= cap:
            self.max_len = max_len
            return True
        src, dst = self._flip, 1 - self._flip
        if not all(isinstance(a, HostBuffer) for a in self.arenas):
            return False
        old_slot, self.slot = self.slot, self._slot(self.batch, max_len)
        shape = (self.batch, self.heads, self.length, self.head_dim)
        self.arenas[dst].reserve(self.slot * len(self.names))
        for i in range(len(self.names)):
            was = self.arenas[src].view(i * old_slot, self.dtype, shape)
            now = self.arenas[dst].view(i * self.slot, self.dtype, (*shape[:2], keep, shape[3]))
            np.copyto(now, was[:, :, :keep])
        self.arenas[src].reserve(self.slot * len(self.names))  # the next present's arena: its bytes are free
        bases = [0, 0]
        bases[dst], bases[src] = self.arenas[dst].ptr, self.arenas[src].ptr
        self._place(bases, dst)
        self.length, self.max_len = keep, max_len
        return True

    def bind(self, new: int) -> None:
        """Bind past (``length`` tokens) and present (``length + new``) of every layer for the next run."""
        total = self.length + new
        if total > self.max_len:
            raise RuntimeErrorBase(f"KV cache of {self.max_len} tokens cannot take {total}")
        past = (self.batch, self.heads, self.length, self.head_dim)
        present = (self.batch, self.heads, total, self.head_dim)
        items = []
        for (past_name, present_name), (src, dst) in zip(self.names, self._ptrs[self._flip]):
            items.append((past_name, src, past, False))
            items.append((present_name, dst, present, True))
        self.binder.bind_many(self.dtype, items)

    def advance(self, new: int) -> None:
        """The run completed: the present becomes the past."""
        self.length += new
        self._flip ^= 1

    def free(self) -> None:
        for arena in self.arenas:
            arena.free()


class _BoundState:
    """A binder and its KV cache, reused by one generation after another (see ``LmStepper``)."""

    def __init__(self, stepper: LmStepper, binder: Binder) -> None:
        self.binder = binder
        self.kv = KvCache(binder, stepper.kv_names, stepper.info.num_key_value_heads, stepper.info.head_dim,
                          stepper.past_dtype)

    def close(self) -> None:
        self.kv.free()
        self.binder.close()


class Decode:
    """One generation's steps. ``run`` takes (batch, n) ids and the mask and positions that go with them."""

    def run(self, ids: np.ndarray, mask: np.ndarray, pos: np.ndarray) -> Step:
        raise NotImplementedError

    @property
    def length(self) -> int:
        """Tokens in the KV cache (the past of the next run)."""
        raise NotImplementedError

    def resize(self, keep: int, max_len: int) -> bool:
        """Keep the first ``keep`` cached tokens and make room for ``max_len`` (False: cannot, start again)."""
        return False

    def close(self) -> None:
        return None

    def __enter__(self) -> Decode:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _BoundDecode(Decode):
    """The KV cache stays in the binder's buffers; only ids/mask/positions go in, logits or tokens come out."""

    def __init__(self, stepper: LmStepper, state: _BoundState, batch: int, max_len: int) -> None:
        self._stepper, self._state = stepper, state
        self._b, self._kv = state.binder, state.kv
        self._kv.start(batch, max_len)
        self._has_mask, self._has_pos = stepper.has_mask, stepper.has_pos

    def run(self, ids: np.ndarray, mask: np.ndarray, pos: np.ndarray) -> Step:
        b, n = self._b, ids.shape[1]
        b.feed("input_ids", ids)
        if self._has_mask:
            b.feed("attention_mask", mask)
        if self._has_pos:
            b.feed("position_ids", pos)
        self._kv.bind(n)
        b.run()
        self._kv.advance(n)
        return Step(b.next_tokens(), b.last_logits)

    @property
    def length(self) -> int:
        return self._kv.length

    def resize(self, keep: int, max_len: int) -> bool:
        return self._kv.batch == 1 and self._kv.relayout(keep, max_len)

    def close(self) -> None:
        state, self._state = self._state, None
        if state is not None:
            self._stepper._release(state)


class _HostDecode(Decode):
    """A backend without a binder: host arrays through ``infer``, the present fed back as the next past."""

    def __init__(self, stepper: LmStepper, batch: int) -> None:
        self._s = stepper
        self._past: list[np.ndarray] | None = None
        self._batch = batch

    @property
    def length(self) -> int:
        return 0 if self._past is None else int(self._past[0].shape[2])

    def resize(self, keep: int, max_len: int) -> bool:
        if self._past is not None:  # ONNX Runtime takes any past length: a view of the first tokens is enough
            self._past = [np.ascontiguousarray(p[:, :, :keep]) for p in self._past] if keep else None
        return True

    def run(self, ids: np.ndarray, mask: np.ndarray, pos: np.ndarray) -> Step:
        s = self._s
        feeds = {"input_ids": ids}
        if s.has_mask:
            feeds["attention_mask"] = mask
        if s.has_pos:
            feeds["position_ids"] = pos
        if self._past is None:
            shape = (ids.shape[0], s.info.num_key_value_heads, 0, s.info.head_dim)
            empty = np.zeros(shape, s.past_dtype)
            feeds.update({n: empty for n in s.past_names})
        else:
            feeds.update(zip(s.past_names, self._past))
        out = s.backend.infer(feeds)
        self._past = [out[i] for i in s.present_idx]
        logits = out[s.logits_idx][:, -1, :]
        return Step(None, lambda: logits)


class LmStepper:
    """How one LM backend is stepped, worked out once; ``decode`` opens a generation.

    When the backend offers a binder, generations reuse pooled binder+cache states (one per concurrent
    generation, at most ``keep`` kept idle), so device memory is allocated when a generation needs more
    than any before it, never per step.
    """

    def __init__(self, backend: object, info: ModelInfo, *, keep: int = 2) -> None:
        names = list(backend.input_names)  # type: ignore[attr-defined]
        outs = list(backend.output_names)  # type: ignore[attr-defined]
        self.backend, self.info, self.keep = backend, info, keep
        self.past_names = [n for n in names if n.startswith("past_key_values.")]
        self.present_names = ["present." + n[len("past_key_values."):] for n in self.past_names]
        self.present_idx = [outs.index(n) for n in self.present_names]
        self.kv_names = list(zip(self.past_names, self.present_names))
        self.logits_idx = outs.index("logits") if "logits" in outs else 0
        self.past_dtype = past_dtype(getattr(backend, "input_dtypes", {}))
        self.has_mask = "attention_mask" in names
        self.has_pos = "position_ids" in names
        make = getattr(backend, "binder", None)
        self._make_binder: Callable[[ModelInfo], Binder | None] | None = make if callable(make) else None
        self._free: list[_BoundState] = []
        self._lock = threading.Lock()
        self._closed = False

    def decode(self, batch: int, max_len: int) -> Decode:
        """A generation of ``batch`` rows that will hold at most ``max_len`` tokens (prompt + new)."""
        state = self._acquire()
        if state is None:
            return _HostDecode(self, batch)
        try:
            return _BoundDecode(self, state, batch, max_len)
        except BaseException:
            self._release(state)
            raise

    def _acquire(self) -> _BoundState | None:
        with self._lock:
            if self._free:
                return self._free.pop()
        binder = self._make_binder(self.info) if self._make_binder is not None else None
        return None if binder is None else _BoundState(self, binder)

    def _release(self, state: _BoundState) -> None:
        with self._lock:
            if not self._closed and len(self._free) < self.keep:
                self._free.append(state)
                return
        state.close()

    def close(self) -> None:
        """Free the pooled device memory (before the backend closes)."""
        with self._lock:
            self._closed = True
            free, self._free = self._free, []
        for state in free:
            state.close()


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


#: called once per step with the step's logits getter: a hook that looks only now and then fetches only then
StepHook = Callable[[Callable[[], np.ndarray]], None]


def prefill(dec: Decode, ids: np.ndarray, mask: np.ndarray, pos: np.ndarray, chunk: int | None) -> Step:
    """Run a prompt's ``ids`` (batch, n) through ``dec`` in runs of at most ``chunk`` tokens (None: one run).

    ``mask`` covers the cache and the prompt (batch, dec.length + n); ``pos`` the prompt. Each run extends
    the KV cache, so the last run's step is the one-pass prefill's, up to the order of float sums.
    """
    n = ids.shape[1]
    step = n if not chunk else chunk
    past = mask.shape[1] - n
    out: Step | None = None
    for s in range(0, n, step):
        e = min(s + step, n)
        out = dec.run(ids[:, s:e], mask[:, : past + e], pos[:, s:e])
    if out is None:
        raise ConfigError("a prefill needs at least one token")
    return out


def generate_ids(
    stepper: LmStepper, prompts: Sequence[Sequence[int]], cfg: GenerationConfig, *, pad_id: int,
    done: np.ndarray, on_logits: StepHook | None = None, chunk: int | None = None, kept: KeptCache | None = None,
) -> Iterator[tuple[np.ndarray, float]]:
    """Yield (tokens (batch,), seconds) per step; the first step's seconds include the prefill.

    The caller owns ``done`` (bool per row) and sets a row when it ends (EOS, stop string) before
    asking for the next step. Finished rows are fed a pad token (outputs ignored) so the batch stays
    rectangular. Stops when every row is done or after ``max_new_tokens`` steps. Greedy decoding takes
    the backend's on-device tokens when it has them (then no logits leave the device unless the hook asks).
    ``chunk``: the most tokens one run takes (an engine profile's sequence maximum); a longer prompt is
    prefilled in chunks through the KV cache. ``kept``: one prompt's KV cache kept from an earlier
    generation (``kvreuse.KvSession``); only the tokens after its common prefix with the prompt are run.
    """
    rng = np.random.default_rng(cfg.seed)
    greedy = cfg.temperature == 0.0
    if kept is None:
        batch = left_pad(prompts, pad_id)
        ids, mask, pos = batch.ids, batch.mask, batch.pos
        rows, n_prompt = ids.shape
        opened = stepper.decode(rows, n_prompt + cfg.max_new_tokens)
    else:
        (prompt,) = prompts
        n_prompt, rows = len(prompt), 1
        opened, start = kept.prepare(list(prompt), n_prompt + cfg.max_new_tokens)
        ids = np.asarray([prompt[start:]], np.int64)
        mask, pos = np.ones((1, n_prompt), np.int64), np.arange(start, n_prompt, dtype=np.int64)[None]
    with (opened if kept is None else contextlib.nullcontext(opened)) as dec:
        t0 = time.perf_counter()
        step_out = prefill(dec, ids, mask, pos, chunk)
        if kept is not None:
            kept.ids.extend(int(t) for t in ids[0])
        mask, pos = mask, pos[:, -1:]
        ones = np.ones((rows, 1), np.int64)
        for step in range(cfg.max_new_tokens):
            if on_logits is not None:
                on_logits(step_out.logits)
            if greedy and step_out.tokens is not None:
                tokens = step_out.tokens.astype(np.int64, copy=True)
            else:
                tokens = sample(step_out.logits(), cfg, rng).astype(np.int64)
            tokens[done] = pad_id
            t1 = time.perf_counter()
            yield tokens, t1 - t0
            if done.all() or step == cfg.max_new_tokens - 1:
                return
            t0 = time.perf_counter()
            mask = np.concatenate([mask, ones], axis=1)
            pos = pos + 1
            step_out = dec.run(tokens[:, None], mask, pos)
            if kept is not None:  # after the run: the ids always say what the cache holds
                kept.ids.append(int(tokens[0]))


class KeptCache(Protocol):
    """What ``generate_ids`` needs of a kept KV cache (``kvreuse.KvSession``)."""

    ids: list[int]

    def prepare(self, prompt: list[int], max_len: int) -> tuple[Decode, int]: ...
