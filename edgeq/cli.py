"""The edgeq command line: a thin typer shell over the public Python API.

Each area's commands live in ``edgeq/_cli/<area>.py`` and register themselves here. Errors are
rendered through one table (``edgeq/_cli/errors.py``); ``EDGEQ_DEBUG=1`` shows tracebacks.
"""

from __future__ import annotations

import sys

import typer

from edgeq._cli import bench as _bench
from edgeq._cli import build as _build
from edgeq._cli import export as _export
from edgeq._cli import quantize as _quantize
from edgeq._cli import run as _run
from edgeq._cli import serve as _serve
from edgeq._cli import keys as _keys
from edgeq._cli import plan as _plan
from edgeq._cli import store as _store
from edgeq._cli import targets as _targets
from edgeq._cli.common import console
from edgeq._cli.errors import debug_enabled, report

app = typer.Typer(
    name="edgeq",
    help="Edge deployment SDK for quantized models: export, quantize, build engines, ship and run them.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

for _module in (_export, _quantize, _targets, _build, _plan, _keys, _store, _run, _serve, _bench):
    _module.register(app)


@app.command()
def version() -> None:
    """Print the edgeq version."""
    from edgeq import __version__

    console.print(f"edgeq {__version__}")


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point: run the app, map exceptions to one-line errors and exit codes."""
    try:
        # standalone mode lets typer render its own usage errors (exit 2); our errors propagate here.
        app(args=argv, standalone_mode=True)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if debug_enabled():
            raise
        return report(exc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
