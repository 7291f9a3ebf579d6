"""One table from exception type to a one-line message and exit code (huggingface_hub cli/_errors.py style).

``EDGEQ_DEBUG=1`` re-raises so that the full traceback shows.
"""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Callable

from edgeq.errors import DiskFullError, EdgeqError, OutputError, OutputNotWritableError

Render = Callable[[BaseException], tuple[str, str | None, int]]


def _edgeq(exc: BaseException) -> tuple[str, str | None, int]:
    assert isinstance(exc, EdgeqError)
    return exc.message, exc.hint, exc.exit_code


def _oserror(exc: BaseException) -> tuple[str, str | None, int]:
    assert isinstance(exc, OSError)
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        e: OutputError = DiskFullError(f"no space left on device: {exc.filename or ''}".strip())
    elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        e = OutputNotWritableError(f"permission denied: {exc.filename or exc}")
    else:
        return f"{exc.strerror or exc}{': ' + str(exc.filename) if exc.filename else ''}", None, 1
    return e.message, e.hint, e.exit_code


def _memory(exc: BaseException) -> tuple[str, str | None, int]:
    return "out of memory", "use a smaller model or a machine with more memory", 1


#: Most specific first; the first isinstance match renders the error.
ERROR_TABLE: list[tuple[type[BaseException], Render]] = [
    (EdgeqError, _edgeq),
    (MemoryError, _memory),
    (OSError, _oserror),
]


def render(exc: BaseException) -> tuple[str, str | None, int] | None:
    for typ, fn in ERROR_TABLE:
        if isinstance(exc, typ):
            return fn(exc)
    return None


def debug_enabled() -> bool:
    return os.environ.get("EDGEQ_DEBUG", "") not in ("", "0", "false")


def report(exc: BaseException) -> int:
    """Print a one-line error (and a hint line) to stderr; return the exit code."""
    rendered = render(exc)
    if rendered is None:
        message, hint, code = f"unexpected {type(exc).__name__}: {exc}", "set EDGEQ_DEBUG=1 for the traceback", 70
    else:
        message, hint, code = rendered
    first = message.splitlines()[0] if message else type(exc).__name__
    print(f"error: {first}", file=sys.stderr)
    if hint:
        print(f"hint: {hint}", file=sys.stderr)
    return code
