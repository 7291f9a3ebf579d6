#!/usr/bin/env python3
"""Device chat app: a terminal chat over `edgeq.sdk.Runtime.stream`, streaming tokens as they arrive.

Reads user messages from stdin (one per line), keeps the conversation, prints health events
(canary breaches, fallbacks to the previous version, refused versions) as they happen. When the
conversation outgrows the engine's context, the oldest turns are dropped (the system prompt stays).

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


def fit_history(rt: Runtime, history: list[dict[str, str]], max_new_tokens: int) -> list[dict[str, str]]:
    """The newest turns that fit the context with room for the reply (the system prompt is kept)."""
    system = [m for m in history[:1] if m["role"] == "system"]
    turns = history[len(system):]
    while True:
        try:
            rt.encode_prompt(system + turns, max_new_tokens)
            return system + turns
        except ContextLengthError:
            if len(turns) <= 1:
                raise  # the newest message alone does not fit: say so
            turns = turns[2:] if len(turns) > 2 else turns[1:]  # drop the oldest user/assistant pair


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", required=True, help="device store (or a bundle directory)")
    ap.add_argument("--model", default=None)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--system", default=None, help="system prompt")
    ap.add_argument("--canary-every", type=int, default=50, help="requests between canary checks")
    args = ap.parse_args(argv)

    history: list[dict[str, str]] = [{"role": "system", "content": args.system}] if args.system else []
    monitor = MonitorConfig(every_requests=args.canary_every)
    with Runtime.open(args.store, args.model, monitor=monitor, on_event=print_event) as rt:
        print(f"{rt.model} v{rt.version} on {rt.backend_name}. Type a message; EOF to quit.", file=sys.stderr)
        for line in sys.stdin:
            text = line.strip()
            if not text:
                continue
            history.append({"role": "user", "content": text})
            try:
                history = fit_history(rt, history, args.max_new_tokens)
            except ContextLengthError as exc:
                print(f"[error] {exc.message}", file=sys.stderr, flush=True)
                history.pop()
                continue
            print("assistant> ", end="", flush=True)
            stream = rt.stream(history, args.max_new_tokens, temperature=args.temperature)
            for piece in stream:
                print(piece, end="", flush=True)
            reply = stream.result
            print(f"\n[{len(reply.token_ids)} tokens, {reply.decode_tokens_per_s:.1f} tok/s, v{reply.version}]",
                  flush=True)
            history.append({"role": "assistant", "content": reply.text})
        status = rt.status()
        print(f"[status] version={status.version} degraded={status.degraded} "
              f"fallbacks={status.fallbacks}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
