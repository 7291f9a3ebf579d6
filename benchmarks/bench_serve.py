"""`edgeq serve` under load, on loopback only: throughput and latency for 1, 4, 8 and 16 clients.

- The server is `edgeq serve` in its own process on 127.0.0.1 (the device's side), ONNX Runtime CPU, the
  monitor off; the clients are threads of this process, each with its own `openai` client, streaming
  completions (greedy) and counting tokens from the usage chunk.
- Per client count: aggregate completion tokens/s, request latency p50 / p99, time to first token p50.
- `serve` vs in-process `Runtime.generate` at batch 1, the same prompt and budget (aim: <= 5 % added latency).
- 8 concurrent streaming clients vs one: aggregate tokens/s (aim: >= 3x).
- One chat of three turns: the prompt tokens each turn takes from the server's kept KV cache (aim: the second
  turn prefills only its new tokens).

Model: SmolLM2-135M-Instruct (FP32 ONNX export, the offline built-in); ``--model tiny-llama`` (or ``--quick``)
runs the random tiny test model instead. Every run is bounded: a fixed number of requests per client.

    python benchmarks/bench_serve.py [--quick] [--model smollm2-135m|tiny-llama]
"""

from __future__ import annotations

import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import CACHE, EVAL_TEXT, ROOT, Result, arg_parser, cached_export, fmt, setup_env  # noqa: E402

CLIENTS = (1, 4, 8, 16)


def make_bundle(model: str) -> Path:
    """A bundle of the FP32 export (the ONNX engine entry only, no health data), under .cache/benchmarks."""
    from edgeq.converters.bundle import BundleContents, write_bundle
    from edgeq.sdk.bundle.manifest import EngineInfo

    out = CACHE / f"{model}-serve-bundle"
    if (out / "manifest.json").is_file():
        return out
    src = cached_export(model)
    files = {f"model/{p.name}": (p, "onnx" if p.name == "model.onnx" else "onnx_data") for p in src.glob("model.onnx*")}
    for p in src.iterdir():  # tokenizer, chat template, configs and edgeq_model.json
        if p.is_file() and not p.name.startswith("model.onnx") and p.suffix in (".json", ".jinja", ".txt") \
                and p.name != "validation.json":
            role = "model_config" if p.name in ("config.json", "generation_config.json", "edgeq_model.json") else "tokenizer"
            files[f"tokenizer/{p.name}"] = (p, role)
    contents = BundleContents(model_name=model, bundle_version=1, task="text-generation", target="cpu",
                              precision="fp32", files=files,
                              engines=(EngineInfo(flavour="onnx", onnx="model/model.onnx"),))
    return write_bundle(contents, out, overwrite=True)


def prompts(bundle: Path, n: int, tokens: int) -> list[str]:
    """``n`` different prompts of about ``tokens`` tokens, cut from eval.txt."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(bundle / "tokenizer" / "tokenizer.json"))
    ids = tok.encode(EVAL_TEXT.read_text()).ids
    return [tok.decode(ids[i * tokens: (i + 1) * tokens]) for i in range(n)]


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    k = (len(xs) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


class ServeProcess:
    """`edgeq serve` on a free loopback port, stopped with SIGTERM."""

    def __init__(self, bundle: Path, threads: int) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.proc = subprocess.Popen([sys.executable, "-m", "edgeq.cli", "serve", "--store", str(bundle),
                                      "--host", "127.0.0.1", "--port", str(self.port), "--no-monitor",
                                      "--threads", str(threads)], cwd=ROOT, env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def client(self, timeout: float = 600) -> Any:
        import openai

        return openai.OpenAI(base_url=self.url + "/v1", api_key="unused", max_retries=0, timeout=timeout)

    def wait_ready(self, timeout: float = 300) -> None:
        c, until = self.client(5), time.monotonic() + timeout
        while True:
            try:
                c.models.list()
                return
            except Exception:
                if self.proc.poll() is not None or time.monotonic() > until:
                    raise RuntimeError(f"edgeq serve did not start: {self.proc.stderr.read() if self.proc.stderr else ''}")
                time.sleep(0.2)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def one_request(c: Any, model: str, prompt: str, max_tokens: int, stream: bool) -> dict[str, float]:
    t0 = time.perf_counter()
    if not stream:
        r = c.completions.create(model=model, prompt=prompt, max_tokens=max_tokens)
        return {"latency_s": time.perf_counter() - t0, "tokens": r.usage.completion_tokens, "ttft_s": float("nan")}
    first, tokens = None, 0
    for ch in c.completions.create(model=model, prompt=prompt, max_tokens=max_tokens, stream=True,
                                   stream_options={"include_usage": True}):
        if ch.choices and ch.choices[0].text and first is None:
            first = time.perf_counter() - t0
        if ch.usage is not None:
            tokens = ch.usage.completion_tokens
    return {"latency_s": time.perf_counter() - t0, "tokens": tokens, "ttft_s": first if first is not None else float("nan")}


def batch_counts(srv: ServeProcess) -> tuple[float, float]:
    """(batches, rows) the server has run so far, from its /metrics."""
    import re
    import urllib.request

    with urllib.request.urlopen(srv.url + "/metrics", timeout=30) as r:
        text = r.read().decode()
    get = lambda name: float(re.search(rf"{name}_total{{[^}}]*}} ([0-9.e+]+)", text).group(1))  # noqa: E731
    return get("edgeq_serve_batches"), get("edgeq_serve_batch_rows")


def load(srv: ServeProcess, model: str, texts: list[str], clients: int, per_client: int, max_tokens: int) -> dict[str, Any]:
    """``clients`` threads, each streaming ``per_client`` requests back to back."""
    runs: list[dict[str, float]] = []
    lock = threading.Lock()
    start = threading.Barrier(clients)

    def worker(i: int) -> None:
        c = srv.client()
        start.wait()
        for k in range(per_client):
            r = one_request(c, model, texts[(i + k * clients) % len(texts)], max_tokens, stream=True)
            with lock:
                runs.append(r)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    b0, r0 = batch_counts(srv)
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    b1, r1 = batch_counts(srv)
    lat = [r["latency_s"] for r in runs]
    ttft = [r["ttft_s"] for r in runs if r["ttft_s"] == r["ttft_s"]]
    tokens = sum(r["tokens"] for r in runs)
    return {"clients": clients, "requests": len(runs), "tokens": tokens, "wall_s": wall,
            "tok_s": tokens / wall, "p50_s": pct(lat, 0.5), "p99_s": pct(lat, 0.99),
            "ttft_p50_s": pct(ttft, 0.5) if ttft else None, "mean_batch": (r1 - r0) / max(b1 - b0, 1), "runs": runs}


def chat_turns(srv: ServeProcess, model: str, texts: list[str], max_tokens: int) -> list[dict[str, Any]]:
    """One chat of three turns through the server: per turn, prompt tokens, those taken from the kept KV cache
    (usage.prompt_tokens_details.cached_tokens), and the latency. The user messages are cut from eval.txt."""
    c = srv.client()
    msgs: list[dict[str, str]] = [{"role": "system", "content": "You are a helpful assistant."}]
    turns = []
    for i in range(3):
        msgs.append({"role": "user", "content": "Summarise this: " + texts[i]})
        t0 = time.perf_counter()
        r = c.chat.completions.create(model=model, messages=msgs, max_tokens=max_tokens)
        dt = time.perf_counter() - t0
        details = r.usage.prompt_tokens_details
        turns.append({"turn": i + 1, "prompt_tokens": r.usage.prompt_tokens, "latency_s": dt,
                      "cached_tokens": details.cached_tokens if details is not None else 0})
        msgs.append({"role": "assistant", "content": r.choices[0].message.content})
    return turns


def main() -> int:
    ap = arg_parser(__doc__)
    ap.add_argument("--model", default=None, choices=("smollm2-135m", "tiny-llama"))
    ap.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0 = all cores)")
    args = ap.parse_args()
    setup_env()
    model = args.model or ("tiny-llama" if args.quick else "smollm2-135m")
    prompt_tokens, max_tokens = 64, 32
    repeats = 3 if args.quick else 9
    per_client = {1: 8, 4: 4, 8: 3, 16: 2} if not args.quick else {1: 2, 4: 1, 8: 1, 16: 1}
    res = Result("serve", quick=args.quick)
    res.notes.append(f"model {model} (FP32 ONNX, ONNX Runtime CPU, {args.threads or 'all'} intra-op threads); "
                     f"prompts of {prompt_tokens} tokens from eval.txt, max_tokens {max_tokens}, greedy; "
                     "server and clients on 127.0.0.1 in two processes of one machine")
    bundle = make_bundle(model)
    texts = prompts(bundle, 16, prompt_tokens)

    from edgeq.sdk import BackendOptions, MonitorConfig, Runtime

    srv = ServeProcess(bundle, args.threads)
    try:
        srv.wait_ready()
        c = srv.client()
        # serve vs in-process generate at batch 1: interleaved pairs, so that both see the same load on
        # the machine (a shared machine's load moves both by more than the few % measured here)
        with Runtime.open(bundle, backend=BackendOptions(intra_op_threads=args.threads),
                          monitor=MonitorConfig(enabled=False)) as rt:
            rt.generate(texts[0], max_new_tokens=max_tokens)
            one_request(c, model, texts[0], max_tokens, stream=False)  # warm-up
            inproc, served = [], []
            for i in range(repeats):
                for side in ((0, 1) if i % 2 == 0 else (1, 0)):
                    if side == 0:
                        t0 = time.perf_counter()
                        r = rt.generate(texts[0], max_new_tokens=max_tokens)
                        inproc.append(time.perf_counter() - t0)
                    else:
                        served.append(one_request(c, model, texts[0], max_tokens, stream=False))
            inproc_tokens = len(r.token_ids)
        res.records.append({"what": "generate in-process", "latency_s": inproc, "tokens": inproc_tokens})
        res.records.append({"what": "serve batch 1 (not streamed)", "runs": served})
        turns = chat_turns(srv, model, texts[4:], max_tokens)
        res.records.append({"what": "chat turns (server prefix cache)", "turns": turns})
        for t in turns:
            print(f"[serve] chat turn {t['turn']}: {t['prompt_tokens']} prompt tokens, {t['cached_tokens']} cached, "
                  f"prefilled {t['prompt_tokens'] - t['cached_tokens']}, {t['latency_s']:.2f} s", flush=True)
        loads = {}
        for n in CLIENTS:
            loads[n] = load(srv, model, texts, n, per_client[n], max_tokens)
            res.records.append({"what": f"load {n} clients", **loads[n]})
            print(f"[serve] {n:2d} clients: {loads[n]['tok_s']:.1f} tok/s, p50 {loads[n]['p50_s']:.2f} s, "
                  f"p99 {loads[n]['p99_s']:.2f} s, mean batch {loads[n]['mean_batch']:.1f}", flush=True)
    finally:
        srv.stop()

    g = statistics.median(inproc)
    s = statistics.median(r["latency_s"] for r in served)
    pair = statistics.median(r["latency_s"] / t for r, t in zip(served, inproc))
    added = 100.0 * (pair - 1.0)
    ratio = loads[8]["tok_s"] / loads[1]["tok_s"]
    res.table(f"edgeq serve on loopback, {model}: streaming clients",
              ["clients", "requests", "completion tok/s (all clients)", "latency p50 s", "latency p99 s",
               "first token p50 s", "mean batch rows"],
              [[n, L["requests"], fmt(L["tok_s"]), fmt(L["p50_s"]), fmt(L["p99_s"]), fmt(L["ttft_p50_s"]),
                fmt(L["mean_batch"])]
               for n, L in loads.items()],
              notes=f"each client streams its requests back to back ({per_client} per client); batch size bounded "
                    "by the server (8 rows: ONNX Runtime records no profile maximum)")
    res.table(f"edgeq serve vs in-process generate, {model}",
              ["measure", "value", "aim"],
              [["generate() at batch 1, median s", fmt(g), None],
               ["serve at batch 1 (one client, not streamed), median s", fmt(s), None],
               ["serve added latency % (median of interleaved pairs)", fmt(added), "<= 5"],
               ["8 streaming clients / 1 client, aggregate tok/s", fmt(ratio), ">= 3"]],
              notes=f"{repeats} interleaved pairs of the same prompt ({inproc_tokens} new tokens); the machine's "
                    "1-minute load average is in the result file")
    res.table(f"edgeq serve, one chat of three turns, {model}",
              ["turn", "prompt tokens", "taken from the kept KV cache", "prefilled", "latency s"],
              [[t["turn"], t["prompt_tokens"], t["cached_tokens"], t["prompt_tokens"] - t["cached_tokens"],
                fmt(t["latency_s"])] for t in turns],
              notes="aim: the second turn prefills only its new tokens. The whole history is sent each turn (as "
                    "OpenAI clients do); the server matches its tokens against the KV caches it kept "
                    f"(ServeConfig.prefix_cache); max_tokens {max_tokens}, greedy")
    res.write(args.out)
    print(f"[serve] added latency at batch 1: {added:.1f} %; 8 clients vs 1: {ratio:.2f}x aggregate tok/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
