#!/usr/bin/env python3
"""A small embedding HTTP service on `edgeq.sdk.Runtime.embed` (standard library http.server).

    POST /embed    {"texts": ["...", ...]}  -> {"model", "version", "dim", "embeddings": [[...], ...]}
    GET  /healthz  200 {"status": "ok", ...} or 503 when the model is degraded
    GET  /metrics  Prometheus text format

Binds 127.0.0.1 only. ``--port 0`` picks a free port; the chosen one is printed on the first line.

    python samples/embed_service.py --store /var/lib/edgeq --model minilm-l6 --port 8080
"""

from __future__ import annotations

import argparse
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from edgeq.errors import EdgeqError
from edgeq.sdk import MonitorConfig, Runtime

MAX_BODY = 1 << 20
MAX_TEXTS = 256


def make_handler(rt: Runtime) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _send(self, code: int, body: bytes, ctype: str = "application/json") -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _json(self, code: int, obj: Any) -> None:
            self._send(code, json.dumps(obj).encode())

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            if self.path == "/healthz":
                st = rt.status().to_dict()
                body = {"status": "degraded" if st["degraded"] else "ok", "version": st["version"],
                        "backend": st["backend"], "fallbacks": st["fallbacks"], "last_canary": st["last_canary"]}
                self._json(503 if st["degraded"] else 200, body)
            elif self.path == "/metrics":
                self._send(200, rt.metrics.render(), "text/plain; version=0.0.4")
            else:
                self._json(404, {"error": "not found"})

        def do_POST(self) -> None:  # noqa: N802
            if self.path != "/embed":
                self._json(404, {"error": "not found"})
                return
            n = int(self.headers.get("Content-Length") or 0)
            if not 0 < n <= MAX_BODY:
                self._json(413 if n else 400, {"error": f"body must be 1..{MAX_BODY} bytes"})
                return
            try:
                req = json.loads(self.rfile.read(n))
                texts = req["texts"]
                if not isinstance(texts, list) or not texts or len(texts) > MAX_TEXTS \
                        or not all(isinstance(t, str) for t in texts):
                    raise ValueError(f"texts must be a list of 1..{MAX_TEXTS} strings")
            except (ValueError, KeyError, TypeError) as exc:
                self._json(400, {"error": f"bad request: {exc}"})
                return
            try:
                vectors = rt.embed(texts)
            except EdgeqError as exc:
                self._json(500, {"error": exc.message})
                return
            self._json(200, {"model": rt.model, "version": rt.version, "dim": int(vectors.shape[1]),
                             "embeddings": vectors.round(6).tolist()})

        def log_message(self, fmt: str, *args: Any) -> None:  # keep stdout for the port line
            return

    return Handler


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", required=True)
    ap.add_argument("--model", default=None)
    ap.add_argument("--port", type=int, default=8080)
    ap.add_argument("--canary-every", type=int, default=200)
    args = ap.parse_args(argv)

    def on_event(ev: dict[str, Any]) -> None:
        print(f"[health] {ev['event']}: {json.dumps({k: v for k, v in ev.items() if k != 'event'})}",
              file=sys.stderr, flush=True)

    with Runtime.open(args.store, args.model, monitor=MonitorConfig(every_requests=args.canary_every),
                      on_event=on_event) as rt:
        server = ThreadingHTTPServer(("127.0.0.1", args.port), make_handler(rt))
        print(f"listening on http://127.0.0.1:{server.server_address[1]} ({rt.model} v{rt.version})", flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
