"""The one place the benchmarks call edgeq's quantizer, so that an API change touches one function."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any


@lru_cache(maxsize=2)
def _loaded(name: str) -> Any:
    """The torch model, loaded once per process (edgeq's quantize copies it before folding scales)."""
    from edgeq.converters.sources import load_model

    return load_model(name)


def quantize(src_dir: Path, out_dir: Path, scheme: str, *, accuracy_budget: str | None = None, **opts: Any) -> Path:
    """Quantize the model exported in ``src_dir`` with edgeq's ``scheme`` into ``out_dir``; returns the ONNX path.

    edgeq's own quality gate (``validate``) is switched off here: the benchmark measures every candidate
    with one evaluation on the evaluation text, and a scheme past its gate must still show its numbers.
    """
    from edgeq.converters.quantize import get_config
    from edgeq.converters.quantize import quantize as edgeq_quantize

    name = json.loads((Path(src_dir) / "edgeq_model.json").read_text())["name"]
    cfg = get_config(scheme, validate=False, **opts)
    res = edgeq_quantize(_loaded(name), cfg, out_dir, accuracy_budget=accuracy_budget)
    last_report.clear()
    last_report.update(res.report)
    return res.onnx_path


#: the quantize report of the last call (kept layers, block sizes, timings), for the benchmark records
last_report: dict[str, Any] = {}


def onnx_bundle(fp_dir: Path, q_dir: Path, out: Path, *, precision: str = "fp32", health: bool = True,
                cpu_graph: bool = False) -> Path:
    """A bundle that serves ``q_dir/model.onnx`` through ONNX Runtime (engine flavour ``onnx``), with the
    health data edgeq's build writes (canaries from the FP reference ``fp_dir``). Laid out as
    ``edgeq build`` lays out its bundles (model/, tokenizer/, health/). ``cpu_graph``: with the CPU graph
    ``edgeq build`` adds (``converters.cpu_check.add_cpu_graph``, derived from a copy of ``q_dir``)."""
    import tempfile

    info = json.loads((fp_dir / "edgeq_model.json").read_text())
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".bench-bundle-", dir=out.parent) as work:
        return _onnx_bundle(fp_dir, q_dir, out, Path(work), info, precision, health, cpu_graph)


def _onnx_bundle(fp_dir: Path, q_dir: Path, out: Path, work: Path, info: dict[str, Any], precision: str,
                 health: bool, cpu_graph: bool) -> Path:
    import shutil

    from edgeq.converters.bundle import BundleContents, write_bundle
    from edgeq.sdk.bundle.manifest import EngineInfo

    files: dict[str, tuple[Path, str]] = {}
    engines = []
    if health:
        from edgeq.converters.health import build_health_data

        for rel, role in build_health_data(info["task"], fp_dir, q_dir, work):
            files[rel] = (work / rel, role)
    build: dict[str, Any] = {}
    if cpu_graph:
        from edgeq.converters.cpu_check import add_cpu_graph

        cfg = json.loads((fp_dir / "config.json").read_text())
        model_dir = work / "model"
        model_dir.mkdir()
        for p in q_dir.glob("model.onnx*"):
            shutil.copy2(p, model_dir / p.name)
        shutil.copy2(fp_dir / "edgeq_model.json", model_dir / "edgeq_model.json")
        _, build["cpu_graph"] = add_cpu_graph(model_dir / "model.onnx", num_heads=cfg["num_attention_heads"],
                                              hidden_size=cfg["hidden_size"],
                                              max_positions=cfg.get("max_position_embeddings"),
                                              health_dir=work if health else None)
        q_dir = model_dir
        engines.append(EngineInfo(flavour="onnx", onnx="model/model.cpu.onnx", precision=precision, device="cpu"))
    for p in sorted(q_dir.glob("model*.onnx*")):
        files[f"model/{p.name}"] = (p, "onnx" if p.suffix == ".onnx" else "onnx_data")
    for p in sorted(fp_dir.iterdir()):
        if p.is_file() and not p.name.startswith("model.onnx") and p.name != "validation.json":
            if p.name == "edgeq_model.json":
                files[f"model/{p.name}"] = (p, "model_config")
            else:
                files[f"tokenizer/{p.name}"] = (p, "model_config" if p.name in ("config.json", "generation_config.json") else "tokenizer")
    engines.append(EngineInfo(flavour="onnx", path=None, plan=None, onnx="model/model.onnx", compute_capabilities=(),
                              trt_version=None, precision=precision))
    contents = BundleContents(model_name=info["name"], bundle_version=1, task=info["task"], target="cpu-ort",
                              precision=precision, files=files, engines=tuple(engines), model_id=info.get("model_id", ""),
                              build=build)
    shutil.rmtree(out, ignore_errors=True)
    write_bundle(contents, out)
    return out


def open_runtime(bundle: Path, threads: int, *, monitor: bool) -> Any:
    """``edgeq.sdk.runtime.runtime.Runtime`` on a bundle directory, ORT CPU with ``threads`` intra-op threads."""
    from edgeq.sdk.runtime.backends import BackendOptions
    from edgeq.sdk.health.monitor import MonitorConfig
    from edgeq.sdk.runtime.runtime import Runtime

    return Runtime.open(bundle, backend=BackendOptions(intra_op_threads=threads),
                        monitor=MonitorConfig() if monitor else MonitorConfig(enabled=False))
