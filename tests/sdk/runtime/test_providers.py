"""GPU execution-provider selection without a GPU: ask only for the providers whose libraries load,
and give TensorRT the bundle's profile shapes."""

from __future__ import annotations

import logging
import struct
import types
from pathlib import Path

import pytest

from edgeq.sdk.bundle.plan import BuildPlan, InputShape, OptimizationProfile
from edgeq.sdk.runtime.backends import providers as eps
from edgeq.sdk.runtime.backends.base import BackendOptions
from edgeq.sdk.runtime.backends.ort import OrtGpuBackend


def write_elf(path: Path, needed: list[str]) -> Path:
    """A minimal ELF64 shared object whose dynamic section lists ``needed`` (enough for DT_NEEDED readers)."""
    strtab = b"\0" + b"".join(n.encode() + b"\0" for n in needed)
    offsets, at = [], 1
    for n in needed:
        offsets.append(at)
        at += len(n) + 1
    ehsize, phentsize, phnum = 64, 56, 2
    dyn_off = ehsize + phentsize * phnum
    entries = [(1, o) for o in offsets] + [(5, 0), (0, 0)]  # DT_NEEDED..., DT_STRTAB (patched below), DT_NULL
    str_off = dyn_off + 16 * len(entries)
    entries[-2] = (5, str_off)  # vaddr == file offset: one PT_LOAD at 0
    total = str_off + len(strtab)
    ident = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)
    head = struct.pack("<16sHHIQQQIHHHHHH", ident, 3, 62, 1, 0, ehsize, 0, 0, ehsize, phentsize, phnum, 64, 0, 0)
    ph = struct.pack("<IIQQQQQQ", 1, 5, 0, 0, 0, total, total, 0x1000)
    ph += struct.pack("<IIQQQQQQ", 2, 6, dyn_off, dyn_off, dyn_off, 16 * len(entries), 16 * len(entries), 8)
    dyn = b"".join(struct.pack("<qQ", t, v) for t, v in entries)
    path.write_bytes(head + ph + dyn + strtab)
    return path


def fake_ort(tmp: Path, libs: dict[str, list[str]],
             have: tuple[str, ...] = (eps.TRT_EP, eps.CUDA_EP, eps.CPU_EP)) -> types.SimpleNamespace:
    capi = tmp / "onnxruntime" / "capi"
    capi.mkdir(parents=True)
    for suffix, needed in libs.items():
        write_elf(capi / f"libonnxruntime_providers_{suffix}.so", needed)
    (capi / "libonnxruntime_providers_shared.so").write_bytes(b"")
    return types.SimpleNamespace(__file__=str(tmp / "onnxruntime" / "__init__.py"),
                                 get_available_providers=lambda: list(have))


class _Version:
    """A version whose bundle carries a build plan with one profile."""

    model, version = "tiny", 1

    def __init__(self, with_plan: bool = True) -> None:
        plan = BuildPlan(flavour="tensorrt", onnx="model/model.onnx", engine="engine/model.engine", precision="fp16",
                         profiles=(OptimizationProfile((
                             InputShape("input_ids", (1, 1), (1, 64), (4, 512)),
                             InputShape("past_key_values.0.key", (1, 3, 0, 64), (1, 3, 64, 64), (4, 3, 1023, 64)),
                         )),))
        self._files = {"plan/build_plan.json": plan.to_json().encode()} if with_plan else {}
        entries = [types.SimpleNamespace(path=p, role="plan") for p in self._files]
        self.manifest = types.SimpleNamespace(files_with_role=lambda role: entries if role == "plan" else [])

    def read(self, path: str) -> bytes:
        return self._files[path]


def test_elf_reader_lists_needed_libraries(tmp_path: Path) -> None:
    f = write_elf(tmp_path / "x.so", ["libnvinfer.so.10", "libc.so.6"])
    assert eps.needed_sonames(f) == ["libnvinfer.so.10", "libc.so.6"]
    (tmp_path / "notelf.so").write_bytes(b"not an elf at all, just text" * 4)
    assert eps.needed_sonames(tmp_path / "notelf.so") == []


def test_elf_reader_on_a_real_library() -> None:
    import onnxruntime

    lib = next((Path(onnxruntime.__file__).parent / "capi").glob("libonnxruntime.so*"))
    assert "libc.so.6" in eps.needed_sonames(lib)


def test_tensorrt_is_not_asked_for_when_libnvinfer_is_absent(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    ort = fake_ort(tmp_path, {"tensorrt": ["libnvinfer.so.10", "libc.so.6"], "cuda": ["libm.so.6", "libc.so.6"]})
    be = OrtGpuBackend()
    with caplog.at_level(logging.INFO):
        chosen = be._providers(ort, _Version(), BackendOptions(device_id=0))
    assert chosen == [(eps.CUDA_EP, {"device_id": "0"}), eps.CPU_EP]
    assert "libnvinfer.so.10" in caplog.text and "TensorrtExecutionProvider" in caplog.text


def test_tensorrt_gets_the_bundle_profile_shapes(tmp_path: Path) -> None:
    ort = fake_ort(tmp_path, {"tensorrt": ["libc.so.6"], "cuda": ["libc.so.6"]})
    chosen, skipped = eps.gpu_providers(ort, _Version(), device_id=1)
    assert skipped == [] and [c if isinstance(c, str) else c[0] for c in chosen] == [eps.TRT_EP, eps.CUDA_EP, eps.CPU_EP]
    trt = chosen[0][1]
    assert trt["device_id"] == "1"
    assert trt["trt_profile_min_shapes"] == "input_ids:1x1,past_key_values.0.key:1x3x0x64"
    assert trt["trt_profile_opt_shapes"] == "input_ids:1x64,past_key_values.0.key:1x3x64x64"
    assert trt["trt_profile_max_shapes"] == "input_ids:4x512,past_key_values.0.key:4x3x1023x64"
    no_plan, _ = eps.gpu_providers(ort, _Version(with_plan=False), device_id=0)
    assert not any(k.startswith("trt_profile") for k in no_plan[0][1])


def test_gpu_backend_unavailable_when_no_gpu_provider_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ort = fake_ort(tmp_path, {"tensorrt": ["libnvinfer.so.10"], "cuda": ["libcublas.so.99"]})
    monkeypatch.setattr(OrtGpuBackend, "_ort", classmethod(lambda cls: ort))
    why = OrtGpuBackend.available()
    assert why is not None and "libnvinfer.so.10" in why and "libcublas.so.99" in why
    cpu_only = fake_ort(tmp_path / "cpu", {}, have=(eps.CPU_EP,))
    monkeypatch.setattr(OrtGpuBackend, "_ort", classmethod(lambda cls: cpu_only))
    assert "install onnxruntime-gpu" in OrtGpuBackend.available()
