"""`edgeq run` (generate text, streamed) and `edgeq embed` against a device store or a bundle directory."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from edgeq._cli.common import console, err_console

StoreOrBundle = Annotated[Path, typer.Option("--store", envvar="EDGEQ_STORE",
                                             help="device store directory, or a bundle directory to run in place")]
ModelName = Annotated[str | None, typer.Option("--model", "-m", help="model name in the store")]
Threads = Annotated[int, typer.Option("--threads", help="ONNX Runtime intra-op threads (0 = all cores)")]


def open_runtime(store: Path, model: str | None, threads: int, monitor: bool):  # type: ignore[no-untyped-def]
    """The Runtime for `edgeq run` / `embed` / `serve`, printing health events to stderr."""
    from edgeq.sdk import BackendOptions, MonitorConfig, Runtime

    def show(ev: dict) -> None:  # type: ignore[type-arg]
        err_console.print(f"[yellow]health[/yellow] {ev['event']}: "
                          + ", ".join(f"{k}={v}" for k, v in ev.items() if k not in ("event", "at", "model")))

    return Runtime.open(store, model, backend=BackendOptions(intra_op_threads=threads),
                        monitor=MonitorConfig(enabled=monitor), on_event=show)


def register(app: typer.Typer) -> None:
    @app.command()
    def run(
        prompt: Annotated[str, typer.Argument(help="the prompt (a user message with --chat)")],
        store: StoreOrBundle,
        model: ModelName = None,
        max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", "-n")] = 128,
        temperature: Annotated[float, typer.Option(help="0 = greedy")] = 0.0,
        top_p: Annotated[float, typer.Option("--top-p")] = 1.0,
        top_k: Annotated[int, typer.Option("--top-k")] = 0,
        stop: Annotated[list[str] | None, typer.Option("--stop", help="stop string (repeatable)")] = None,
        seed: Annotated[int | None, typer.Option()] = None,
        chat: Annotated[bool, typer.Option("--chat/--raw", help="wrap the prompt in the model's chat template")] = True,
        threads: Threads = 0,
        monitor: Annotated[bool, typer.Option("--monitor/--no-monitor")] = True,
    ) -> None:
        """Generate text from a causal LM in the store, streaming tokens as they come."""
        with open_runtime(store, model, threads, monitor) as rt:
            tok = rt.tokenizer
            message = [{"role": "user", "content": prompt}] if chat and tok is not None and tok.chat_template else prompt
            stream = rt.stream(message, max_new_tokens, temperature=temperature, top_p=top_p, top_k=top_k,
                               stop=tuple(stop or ()), seed=seed)
            for piece in stream:
                console.print(piece, end="", markup=False, highlight=False, soft_wrap=True)
            console.print()
            r = stream.result
            err_console.print(f"[dim]{rt.model} v{r.version} on {rt.backend_name}: {len(r.token_ids)} tokens, "
                              f"prefill {r.prefill_s * 1e3:.0f} ms, decode {r.decode_tokens_per_s:.1f} tok/s, "
                              f"finish={r.finish_reason}[/dim]")

    @app.command()
    def embed(
        texts: Annotated[list[str], typer.Argument(help="texts to embed")],
        store: StoreOrBundle,
        model: ModelName = None,
        threads: Threads = 0,
    ) -> None:
        """Print sentence embeddings (JSON, one list per text) from an encoder in the store."""
        with open_runtime(store, model, threads, monitor=False) as rt:
            vectors = rt.embed(texts)
        console.print_json(json.dumps({"model": rt.model, "version": rt.version, "dim": int(vectors.shape[1]),
                                       "embeddings": [[round(float(x), 6) for x in v] for v in vectors]}))
