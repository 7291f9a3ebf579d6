"""Peer quantizers run on the same FP32 ONNX as edgeq: ONNX Runtime's own, and probes for the ones
that cannot run here (NVIDIA ModelOpt). Each producer writes ``out_dir/model.onnx`` and returns it.

Fairness rules, applied to every peer: the same FP32 export, linear layers (MatMul) only, the LM head
left in float (edgeq keeps it FP16 by default), calibration windows from ``calibration.txt`` only.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import CALIB_TEXT

Producer = Callable[[Path, Path], Path]


def head_nodes(onnx_path: Path) -> list[str]:
    """Names of the MatMul nodes that produce a graph output (the LM head): kept in float by every peer."""
    import onnx

    m = onnx.load(str(onnx_path), load_external_data=False)
    outs = {o.name for o in m.graph.output}
    return [n.name for n in m.graph.node if n.op_type in ("MatMul", "Gemm") and set(n.output) & outs]


def linear_nodes(onnx_path: Path) -> list[str]:
    """MatMul/Gemm nodes whose second input is a weight initializer (the linear layers), minus the LM head.

    Attention's activation×activation MatMuls are left alone, as edgeq's quantizers do."""
    import onnx

    m = onnx.load(str(onnx_path), load_external_data=False)
    inits = {i.name for i in m.graph.initializer}
    head = set(head_nodes(onnx_path))
    return [n.name for n in m.graph.node
            if n.op_type in ("MatMul", "Gemm") and len(n.input) > 1 and n.input[1] in inits and n.name not in head]


#: notes the producers leave for the result file (e.g. a format fallback and the error that forced it)
NOTES: list[str] = []


def _save(model: Any, out_dir: Path) -> Path:
    import onnx

    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "model.onnx"
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="model.onnx_data", size_threshold=1024)
    return path


def copy_side_files(src_dir: Path, out_dir: Path) -> None:
    for f in src_dir.iterdir():
        if f.suffix in (".json", ".txt", ".model") and not (out_dir / f.name).exists():
            shutil.copy2(f, out_dir / f.name)


# -- ONNX Runtime MatMulNBitsQuantizer (INT4 weight-only, QDQ: the portable DequantizeLinear form) -------
def ort_nbits(algo: str, block: int) -> Producer:
    def produce(src_dir: Path, out_dir: Path) -> Path:
        import onnx
        from onnxruntime.quantization import QuantFormat
        from onnxruntime.quantization.matmul_nbits_quantizer import (
            DefaultWeightOnlyQuantConfig, HQQWeightOnlyQuantConfig, MatMulNBitsQuantizer)

        src = src_dir / "model.onnx"
        if algo == "rtn":
            cfg = DefaultWeightOnlyQuantConfig(block_size=block, is_symmetric=False, quant_format=QuantFormat.QDQ)
        else:
            try:
                cfg = HQQWeightOnlyQuantConfig(block_size=block, bits=4, quant_format=QuantFormat.QDQ)
                MatMulNBitsQuantizer(onnx.load(str(src), load_external_data=False), algo_config=cfg)
            except Exception as exc:  # ORT's HQQ refuses QDQ: fall back to its MatMulNBits contrib op, say why
                from benchmarks.common import error_text

                note = f"ORT HQQ with quant_format=QDQ refused ({error_text(exc)}); HQQ rows use QOperator (com.microsoft MatMulNBits)."
                if note not in NOTES:
                    NOTES.append(note)
                cfg = HQQWeightOnlyQuantConfig(block_size=block, bits=4, quant_format=QuantFormat.QOperator)
        q = MatMulNBitsQuantizer(onnx.load(str(src)), nodes_to_exclude=head_nodes(src), algo_config=cfg)
        q.process()
        path = _save(q.model.model, out_dir)
        copy_side_files(src_dir, out_dir)
        return path

    return produce


# -- ONNX Runtime quantize_static / quantize_dynamic -------------------------------------------------
class LmCalibrationReader:
    """Calibration windows of ``calibration.txt`` fed to an LM ONNX with an empty KV past."""

    def __init__(self, src_dir: Path, n_windows: int, seq: int) -> None:
        from benchmarks import lm_eval

        tok = lm_eval.tokenizer(src_dir)
        ids = tok.encode(CALIB_TEXT.read_text(), add_special_tokens=False).ids
        self.windows = [np.asarray(ids[i * seq:(i + 1) * seq], dtype=np.int64)[None] for i in range(n_windows)]
        self.num_kv, self.head_dim = lm_eval.kv_shape(src_dir)
        self.sess = lm_eval.session(src_dir / "model.onnx")
        self._it: Iterator[dict[str, np.ndarray]] | None = None

    def _feeds(self) -> Iterator[dict[str, np.ndarray]]:
        from edgeq.converters.validate import lm_feeds

        for w in self.windows:
            yield lm_feeds(self.sess, w, [], self.num_kv, self.head_dim)

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._it is None:
            self._it = self._feeds()
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = None


def ort_static(kind: str, n_windows: int = 8, seq: int = 128, signed_act: bool = False) -> Producer:
    """quantize_static, QDQ, per-channel weights, linear MatMuls only. ``kind``: int8 (MinMax) or fp8 (ORT forces
    Distribution calibration for FP8)."""

    def produce(src_dir: Path, out_dir: Path) -> Path:
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

        src = src_dir / "model.onnx"
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / "model.onnx"
        if kind == "int8":
            types = dict(activation_type=QuantType.QInt8 if signed_act else QuantType.QUInt8, weight_type=QuantType.QInt8,
                         calibrate_method=CalibrationMethod.MinMax)
        else:
            types = dict(activation_type=QuantType.QFLOAT8E4M3FN, weight_type=QuantType.QFLOAT8E4M3FN,
                         calibrate_method=CalibrationMethod.Distribution)
        quantize_static(
            str(src), str(path), LmCalibrationReader(src_dir, n_windows, seq), quant_format=QuantFormat.QDQ,
            op_types_to_quantize=["MatMul"], per_channel=True, nodes_to_quantize=linear_nodes(src),
            use_external_data_format=True, **types,
        )
        copy_side_files(src_dir, out_dir)
        return path

    return produce


def ort_dynamic(src_dir: Path, out_dir: Path) -> Path:
    """quantize_dynamic INT8 per-channel weights, MatMul only (DynamicQuantizeLinear + MatMulInteger; ORT-only ops)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    src = src_dir / "model.onnx"
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "model.onnx"
    quantize_dynamic(str(src), str(path), weight_type=QuantType.QInt8, per_channel=True,
                     op_types_to_quantize=["MatMul"], nodes_to_quantize=linear_nodes(src), use_external_data_format=True)
    copy_side_files(src_dir, out_dir)
    return path


def optimum_avx512_vnni(src_dir: Path, out_dir: Path) -> Path:
    """What sentence-transformers' ``export_dynamic_quantized_onnx_model(model, "avx512_vnni")`` runs:
    optimum's ORTQuantizer with ``AutoQuantizationConfig.avx512_vnni(is_static=False, per_channel=True)``."""
    from optimum.onnxruntime import ORTQuantizer
    from optimum.onnxruntime.configuration import AutoQuantizationConfig

    out_dir.mkdir(parents=True, exist_ok=True)
    quantizer = ORTQuantizer.from_pretrained(src_dir, file_name="model.onnx")
    quantizer.quantize(save_dir=out_dir, quantization_config=AutoQuantizationConfig.avx512_vnni(is_static=False, per_channel=True))
    produced = sorted(out_dir.glob("*quantized*.onnx"))
    path = out_dir / "model.onnx"
    if produced and produced[0] != path:
        produced[0].rename(path)
    copy_side_files(src_dir, out_dir)
    return path


# -- probes for peers that cannot be installed in this venv --------------------------------------------
def probe_install(requirement: str, module: str, *, download: str | None = None, timeout_s: float = 180) -> str:
    """Why a peer is not run: '' when ``module`` imports; else what ``pip install --dry-run requirement``
    would install or replace here (and the wheel size of ``download`` from ``pip download --no-deps``).
    The exact pip output lines are returned for the 'not run' list."""
    import importlib.util
    import tempfile

    if importlib.util.find_spec(module) is not None:
        return ""
    lines = [f"not installed in the benchmark venv; pip's own answer about installing {requirement} here:"]
    if download:
        with tempfile.TemporaryDirectory() as tmp:
            dl = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp, download],
                                capture_output=True, text=True, timeout=timeout_s)
            wheels = list(Path(tmp).glob("*"))
            if dl.returncode == 0 and wheels:
                lines.append(f"pip download --no-deps {download}: {wheels[0].name}, {wheels[0].stat().st_size / 1e6:.1f} MB")
            else:
                lines.append(f"pip download --no-deps {download} failed: {(dl.stderr or dl.stdout).strip()[-400:]}")
    dry = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", requirement],
                         capture_output=True, text=True, timeout=timeout_s)
    would = [ln for ln in (dry.stdout + dry.stderr).splitlines() if ln.startswith(("Would install", "ERROR"))]
    lines += would[-3:] or [f"pip install --dry-run exit {dry.returncode}: {(dry.stderr or dry.stdout).strip()[-400:]}"]
    return "\n".join(lines)
