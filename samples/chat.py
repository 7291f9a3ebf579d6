#!/usr/bin/env python3
"""Device chat app: a terminal chat over `edgeq.sdk.Runtime.stream`, streaming tokens as they arrive.

Reads user messages from stdin (one per line), keeps the conversation, prints health events
(canary breaches, fallbacks to the previous version, refused versions) as they happen. The conversation is
a ``Runtime.chat_session``: its KV cache stays between turns, so each turn prefills only its new tokens
(the "cached" count after each reply). When it outgrows the engine's context, the oldest turns are dropped
(the system prompt stays) and what follows the system prompt is prefilled again.

    python samples/chat.py --store /var/lib/edgeq --model smollm2-135m
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from edgeq.errors import ContextLengthError
from edgeq.sdk import MonitorConfig, Runtime


def print_event(event: dict[str, Any]) -> None:
    details = ", ".join(f"{k}={v}" for k, v in event.items() if k not in ("event", "at", "model"))
    print(f"\n[health] {event['event']}: {details}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", required=True, help="device store (or a bundle directory)")
    ap.add_argument("--model", default=None)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--system", default=None, help="system prompt")
    ap.add_argument("--canary-every", type=int, default=50, help="requests between canary checks")
    args = ap.parse_args(argv)

    monitor = MonitorConfig(every_requests=args.canary_every)
    with Runtime.open(args.store, args.model, monitor=monitor, on_event=print_event) as rt, \
            rt.chat_session(args.system, args.max_new_tokens, temperature=args.temperature) as chat:
        print(f"{rt.model} v{rt.version} on {rt.backend_name}. Type a message; EOF to quit.", file=sys.stderr)
        for line in sys.stdin:
            text = line.strip()
            if not text:
                continue
            try:
                stream = chat.stream(text)
            except ContextLengthError as exc:
                print(f"[error] {exc.message}", file=sys.stderr, flush=True)
                continue
            print("assistant> ", end="", flush=True)
            for piece in stream:
                print(piece, end="", flush=True)
            reply = stream.result
            print(f"\n[{len(reply.token_ids)} tokens, {reply.decode_tokens_per_s:.1f} tok/s, "
                  f"{reply.prompt_tokens - reply.cached_tokens} prefilled, {reply.cached_tokens} cached, "
                  f"v{reply.version}]", flush=True)
        status = rt.status()
        print(f"[status] version={status.version} degraded={status.degraded} "
              f"fallbacks={status.fallbacks}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
