"""Token generation for causal LMs on any backend: prefill once, then one token per step with the KV cache.

The cache a step writes (``present.N.*``) is the next step's ``past_key_values.N.*``; the prompt is never
re-run. On a backend with a binder the cache stays in device buffers allocated once per generation
(``KvCache``); otherwise the present arrays come back through ``infer`` and are fed back. Several prompts
run as one batch, left-padded (padding masked out, positions counted from each row's first real token).
Sampling: greedy (temperature 0), temperature, top-k, top-p; stop strings; streaming of text deltas with
incremental detokenisation.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from edgeq.errors import ConfigError, RuntimeErrorBase
from edgeq.sdk.bundle.graph_io import past_dtype
from edgeq.sdk.bundle.model_info import ModelInfo
from edgeq.sdk.runtime.backends.binding import Binder
from edgeq.sdk.runtime.backends.cudart import ALIGN


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
        b = self.binder
        if b.max_batch is not None and b.max_tokens is not None:
            if batch > b.max_batch or max_len > b.max_tokens:
                raise RuntimeErrorBase(
                    f"a generation of {batch} x {max_len} tokens exceeds the engine's limit of "
                    f"{b.max_batch} x {b.max_tokens}", hint="shorten the prompt or max_new_tokens, or split the batch")
            per = b.max_batch * self.heads * b.max_tokens * self.head_dim * self.dtype.itemsize
        else:
            per = batch * self.heads * max_len * self.head_dim * self.dtype.itemsize
        self.slot = (per + ALIGN - 1) // ALIGN * ALIGN
        bases = [arena.reserve(self.slot * len(self.names)) for arena in self.arenas]
        # tensor i lives at the same offset in both arenas: [arena of the past][i] for each parity
        self._ptrs = [[(bases[f] + i * self.slot, bases[1 - f] + i * self.slot) for i in range(len(self.names))]
                      for f in (0, 1)]
        self.batch, self.length, self.max_len, self._flip = batch, 0, max_len, 0

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


def generate_ids(
    stepper: LmStepper, prompts: Sequence[Sequence[int]], cfg: GenerationConfig, *, pad_id: int,
    done: np.ndarray, on_logits: StepHook | None = None,
) -> Iterator[tuple[np.ndarray, float]]:
    """Yield (tokens (batch,), seconds) per step; the first step's seconds include the prefill.

    The caller owns ``done`` (bool per row) and sets a row when it ends (EOS, stop string) before
    asking for the next step. Finished rows are fed a pad token (outputs ignored) so the batch stays
    rectangular. Stops when every row is done or after ``max_new_tokens`` steps. Greedy decoding takes
    the backend's on-device tokens when it has them (then no logits leave the device unless the hook asks).
    """
    rng = np.random.default_rng(cfg.seed)
    batch = left_pad(prompts, pad_id)
    greedy = cfg.temperature == 0.0
    rows, n_prompt = batch.ids.shape
    with stepper.decode(rows, n_prompt + cfg.max_new_tokens) as dec:
        t0 = time.perf_counter()
        step_out = dec.run(batch.ids, batch.mask, batch.pos)
        mask, pos = batch.mask, batch.pos[:, -1:]
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
