"""asyncio on the runtime: decoding runs in a worker thread, text and results come back to the event loop.

Cancelling the awaiting task cancels its requests (their rows end at the next step) and waits for that
step, so when the CancelledError reaches the caller the request has stopped decoding and its handle is
released. An embedding is one inference, which no library can interrupt: a cancelled or expired
``aembed`` returns at once and the inference already running finishes in its thread, its result dropped.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, TypeVar

from edgeq.errors import DeadlineExceededError
from edgeq.sdk.runtime.decode import GenerationResult
from edgeq.sdk.runtime.generation import Request

T = TypeVar("T")


def _retrieve(fut: asyncio.Future[Any]) -> None:
    """Mark a worker's outcome as seen: an error someone else reports must not be logged as lost."""
    if not fut.cancelled():
        fut.exception()


class Channel:
    """One request's text pieces and result, carried from the decoding thread into an event loop.

    Binds the request's ``on_text`` / ``on_finish``; ``fail`` (any thread) ends it with an error.
    """

    def __init__(self, request: Request, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.request = request
        self._loop = loop or asyncio.get_running_loop()
        self._queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self.result: GenerationResult | None = None
        self.error: BaseException | None = None
        self.ended = False
        request.on_text = self._text
        request.on_finish = self._finish

    # -- the decoding thread's side (call_soon_threadsafe raises once the loop is closed: the row is cancelled)
    def _text(self, piece: str) -> None:
        self._loop.call_soon_threadsafe(self._queue.put_nowait, ("text", piece))

    def _finish(self, result: GenerationResult) -> None:
        self._loop.call_soon_threadsafe(self._queue.put_nowait, ("end", result))

    def fail(self, exc: BaseException) -> None:
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, ("error", exc))
        except RuntimeError:  # the loop is closed: nobody is left to tell
            pass

    # -- the event loop's side
    async def next(self) -> str | None:
        """The next piece of text; None once the request has ended (``result`` is then set)."""
        if self.ended:
            return None
        kind, value = await self._queue.get()
        if kind == "text":
            return value
        self.ended = True
        if kind == "end":
            self.result = value
            return None
        self.error = value
        raise value


async def run_async(run: Callable[[], T], requests: Sequence[Request]) -> T:
    """``run()`` (a blocking generation of ``requests``) in the loop's executor, cancellable."""
    fut = asyncio.get_running_loop().run_in_executor(None, run)
    fut.add_done_callback(_retrieve)
    try:
        return await asyncio.shield(fut)
    except asyncio.CancelledError:
        for q in requests:
            q.cancel()
        await asyncio.wait([fut])  # one step at most: the rows end there and the handle is released
        raise


async def embed_async(run: Callable[[], T], deadline_s: float | None) -> T:
    """``run()`` (one embedding inference) in the loop's executor, with a deadline."""
    fut = asyncio.get_running_loop().run_in_executor(None, run)
    fut.add_done_callback(_retrieve)
    try:
        return await asyncio.wait_for(asyncio.shield(fut), deadline_s)
    except TimeoutError as exc:
        raise DeadlineExceededError(f"the embedding did not finish within its deadline of {deadline_s} s",
                                    hint="raise deadline_s, or embed fewer texts per call") from exc


class AsyncStream:
    """``async for piece in rt.astream(...)``: one request's text as it is generated; ``result`` at the end.

    Leaving the loop early (``break``, ``aclose()``, the task cancelled) cancels the request.
    """

    def __init__(self, request: Request, start: Callable[[], Any]) -> None:
        self._request = request
        self._start = start
        self._started = False
        self.result: GenerationResult | None = None

    def cancel(self) -> None:
        self._request.cancel()

    def __aiter__(self) -> AsyncIterator[str]:
        if self._started:
            raise RuntimeError("this stream has already been iterated; call astream() again")
        self._started = True
        return self._pieces()

    async def _pieces(self) -> AsyncIterator[str]:
        channel = Channel(self._request)
        fut = asyncio.get_running_loop().run_in_executor(None, self._start)
        fut.add_done_callback(_retrieve)
        fut.add_done_callback(lambda f: f.cancelled() or f.exception() is None or channel.fail(f.exception()))
        try:
            while (piece := await channel.next()) is not None:
                yield piece
            self.result = channel.result
        finally:
            if self.result is None:
                self._request.cancel()
