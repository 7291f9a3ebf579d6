"""Concurrent requests into batches: a bounded queue and one decoding thread per model.

The event loop submits a request (prompt token ids, already checked against the context) and gets a
Channel that carries its text piece by piece. The worker thread takes the oldest waiting request and every
waiting request that samples the same way (greedy ones all batch together), up to ``max_batch`` rows, and
runs them as one left-padded batch through ``Runtime.generate_requests``. Each row streams on its own
and ends on its own; a cancelled row (its client disconnected) ends at the next step and frees its slot.
A running batch takes no new rows, so the next batch waits briefly for the clients of the one that just
ended (``merge_window_s``): clients that send request after request then share batches instead of
taking turns.

Where the decode-loop work plugs in (it lands in ``edgeq.sdk.runtime``, not here):
- chunked prefill: inside the decode loop; ``ContextLimits.max_prompt`` (runtime/context.py) then lifts,
  and the server's context check follows on its own.
- prefix KV reuse (done): a batch of one row takes the kept KV cache whose tokens share the longest prefix
  with its prompt from the model's ``PrefixCache`` (runtime/kvreuse.py), prefills only the rest, and puts
  its own cache back. Rows of a larger batch prefill in full (their caches are laid out with the batch's
  padding); DESIGN.md says why the match is on token prefixes rather than on a session id.
- admitting rows into a running batch (continuous batching): ``_run`` would hand ``_take``'s next rows to
  the running generation at a step boundary instead of waiting for the batch to end.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from edgeq.errors import OverloadedError
from edgeq.sdk.runtime.aio import Channel
from edgeq.sdk.runtime.decode import GenerationConfig, GenerationResult
from edgeq.sdk.runtime.generation import Request
from edgeq.sdk.runtime.kvreuse import PrefixCache

log = logging.getLogger(__name__)


def sampling_key(cfg: GenerationConfig) -> tuple[Any, ...]:
    """Requests with equal keys may share a batch (the decode loop samples every row with one setting)."""
    if cfg.temperature == 0.0:
        return ("greedy",)  # top-k/top-p/seed do not change an argmax
    return (cfg.temperature, cfg.top_p, cfg.top_k, cfg.seed)


@dataclass(eq=False)
class Job:
    """One waiting or running request."""

    request: Request
    channel: Channel
    config: GenerationConfig
    key: tuple[Any, ...] = field(default=())
    running: bool = False
    ended: bool = False


class Batcher:
    """Batches one model's generation requests. ``submit`` from the event loop; ``close`` to stop."""

    def __init__(self, runtime: Any, *, max_batch: int, max_queue: int, window_s: float = 0.002,
                 merge_window_s: float = 0.05, prefixes: PrefixCache | None = None) -> None:
        self.rt = runtime
        self.prefixes = prefixes if prefixes is not None else PrefixCache(0)
        self.max_batch, self.max_queue = max_batch, max_queue
        self.window_s, self.merge_window_s = window_s, max(merge_window_s, window_s)
        self._expect = 0  # requests expected for the next batch (see _take)
        self._ended_at = 0.0
        self._pending: deque[Job] = deque()
        self._cond = threading.Condition()
        self._closed = False
        #: rows decoding now (submitted, taken into a batch, not ended)
        self.active = 0
        self.rejected = 0
        self.batches = 0
        self.rows = 0  # rows over all batches: rows / batches is the mean batch size
        self._running: list[Job] = []
        self._thread = threading.Thread(target=self._loop, name=f"edgeq-batcher-{runtime.model}", daemon=True)
        self._thread.start()

    @property
    def waiting(self) -> int:
        return len(self._pending)

    # -- the event loop's side -------------------------------------------------------------------
    def submit(self, ids: Sequence[int], config: GenerationConfig, *, max_new_tokens: int,
               stop: Sequence[str] = (), stream: bool = True, loop: asyncio.AbstractEventLoop | None = None) -> Job:
        """Queue one request; raises OverloadedError when ``max_queue`` requests already wait.

        ``stream=False``: only the result crosses into the event loop, not every piece of text.
        """
        req = Request(list(ids), max_new_tokens, tuple(stop))
        job = Job(req, Channel(req, loop), config, sampling_key(config))
        if not stream:
            req.on_text = None
        finish = req.on_finish

        def ended(result: GenerationResult) -> None:
            self._end(job)
            if finish is not None:
                finish(result)

        req.on_finish = ended
        with self._cond:
            if self._closed:
                raise OverloadedError("the server is shutting down")
            if len(self._pending) >= self.max_queue:
                self.rejected += 1
                raise OverloadedError(f"{len(self._pending)} requests are already waiting for {self.rt.model}",
                                      hint="retry later")
            self._pending.append(job)
            self._cond.notify()
        return job

    def cancel(self, job: Job) -> None:
        """The client is gone: drop a waiting job, or end a running row at its next step."""
        with self._cond:
            if not job.running and not job.ended:
                try:
                    self._pending.remove(job)
                except ValueError:
                    pass
                job.ended = True
                return
        job.request.cancel()

    def close(self, timeout: float = 30.0) -> None:
        """Refuse new requests, fail the waiting ones, cancel the running ones, stop the thread."""
        with self._cond:
            self._closed = True
            waiting, self._pending = list(self._pending), deque()
            self._cond.notify_all()
        for job in waiting:
            job.ended = True
            job.channel.fail(OverloadedError("the server is shutting down"))
        self._cancel_running()
        self._thread.join(timeout)
        self.prefixes.clear()

    # -- the worker thread ------------------------------------------------------------------------
    def _end(self, job: Job) -> None:
        with self._cond:
            if not job.ended:
                job.ended = True
                self.active -= 1

    def _take(self) -> list[Job] | None:
        """The next batch: the oldest job plus compatible ones, after waiting a little for company.

        Every batch waits ``window_s`` for requests arriving together. When the batch that just ended had
        rows, their clients are likely to send their next requests within milliseconds: the batch then
        waits up to ``merge_window_s`` after that end for as many as were running or waiting, so that
        groups of clients merge into one batch instead of taking turns (a running batch takes no rows).
        """
        with self._cond:
            while not self._pending and not self._closed:
                self._cond.wait()
            if self._closed:
                return None
            key = self._pending[0].key
            # the merge window counts from the end of the last batch: clients that come back later are not
            # coming back "together" any more, and a request arriving after a quiet spell never waits for it
            until_merge = self._ended_at + self.merge_window_s
            until_base = time.monotonic() + self.window_s
            want = min(self.max_batch, max(self._expect, 1))
            while not self._closed:
                n = sum(j.key == key for j in self._pending)
                if n >= self.max_batch:
                    break
                until = max(until_merge, until_base) if n < want else until_base
                left = until - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            if self._closed:
                return None
            batch = [j for j in self._pending if j.key == key][: self.max_batch]
            for j in batch:
                self._pending.remove(j)
                j.running = True
            self.active += len(batch)
            self.batches += 1
            self.rows += len(batch)
            self._running = batch
            return batch

    def _loop(self) -> None:
        while (batch := self._take()) is not None:
            kv = None
            if len(batch) == 1 and self.prefixes.max_entries:
                kv = batch[0].request.kv = self.prefixes.take(batch[0].request.prompt)
            try:
                self.rt.generate_requests([j.request for j in batch], batch[0].config)
                if kv is not None:
                    self.prefixes.put(kv)
                    kv = None
            except BaseException as exc:  # a failed batch fails its requests, never the server
                log.warning("batch of %d on %s failed: %s", len(batch), self.rt.model, exc)
                for j in batch:
                    if not j.ended:
                        self._end(j)
                        j.channel.fail(exc)
            finally:
                if kv is not None:  # the generation failed: its cache is not kept
                    kv.close()
                with self._cond:  # the clients of this batch and those who waited for it come next
                    self._expect = len(batch) + len(self._pending)
                    self._ended_at = time.monotonic()
                self._running = []

    def _cancel_running(self) -> None:
        for j in list(self._running):
            j.request.cancel()
