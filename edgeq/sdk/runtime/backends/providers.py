"""Which ONNX Runtime GPU execution providers can load here, and how the TensorRT one is configured.

``onnxruntime.get_available_providers()`` lists the providers a wheel was built with, not the ones whose
libraries load: onnxruntime-gpu names TensorrtExecutionProvider on a machine without ``libnvinfer``, and a
session asked for it prints a full "EP Error" and retries. So before asking, the backend reads the
provider library's ELF ``DT_NEEDED`` entries and tries to load each (what the dynamic loader will do
when ONNX Runtime opens it), and leaves out a provider that would fail. The TensorRT provider gets the
bundle's optimization-profile shapes, so a growing KV cache stays inside one profile instead of
rebuilding engines.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import struct
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

TRT_EP = "TensorrtExecutionProvider"
CUDA_EP = "CUDAExecutionProvider"
CPU_EP = "CPUExecutionProvider"
#: provider name -> the suffix of ONNX Runtime's shared library for it (libonnxruntime_providers_<x>.so)
_LIBRARY = {TRT_EP: "tensorrt", CUDA_EP: "cuda"}


def needed_sonames(path: str | Path) -> list[str]:
    """The ``DT_NEEDED`` entries of a 64-bit little-endian ELF shared library (``[]`` for anything else)."""
    with open(path, "rb") as f:
        head = f.read(64)
        if len(head) < 64 or head[:4] != b"\x7fELF" or head[4] != 2 or head[5] != 1:
            return []
        (phoff,) = struct.unpack_from("<Q", head, 0x20)
        phentsize, phnum = struct.unpack_from("<HH", head, 0x36)
        f.seek(phoff)
        table = f.read(phentsize * phnum)
        loads, dynamic = [], None
        for i in range(phnum):
            p_type, _, p_offset, p_vaddr, _, p_filesz, _, _ = struct.unpack_from("<IIQQQQQQ", table, i * phentsize)
            if p_type == 1:  # PT_LOAD: maps file offsets to addresses
                loads.append((p_vaddr, p_offset, p_filesz))
            elif p_type == 2:  # PT_DYNAMIC
                dynamic = (p_offset, p_filesz)
        if dynamic is None:
            return []
        f.seek(dynamic[0])
        raw = f.read(dynamic[1])
        needed: list[int] = []
        strtab = None
        for off in range(0, len(raw) - 15, 16):
            tag, val = struct.unpack_from("<qQ", raw, off)
            if tag == 0:  # DT_NULL
                break
            if tag == 1:  # DT_NEEDED: an offset into the string table
                needed.append(val)
            elif tag == 5:  # DT_STRTAB: the string table's address
                strtab = val
        base = next((o + strtab - v for v, o, size in loads if strtab is not None and v <= strtab < v + size), None)
        if base is None:
            return []
        names = []
        for n in needed:
            f.seek(base + n)
            names.append(f.read(256).split(b"\0", 1)[0].decode("utf-8", "replace"))
        return names


@functools.lru_cache(maxsize=None)
def _library_problem(capi_dir: str, suffix: str) -> str | None:
    lib = Path(capi_dir) / f"libonnxruntime_providers_{suffix}.so"
    if not lib.is_file():
        return f"{lib.name} is not part of this onnxruntime"
    missing: list[str] = []
    first = ""
    for soname in needed_sonames(lib):
        if (lib.parent / soname).exists():  # ONNX Runtime's own libraries, loaded from its directory
            continue
        try:
            ctypes.CDLL(soname)
        except OSError as exc:
            missing.append(soname)
            first = first or str(exc).splitlines()[0][:200]
    if missing:
        return f"{lib.name} needs {', '.join(missing)}, which cannot be loaded ({first})"
    return None


def provider_problem(ort: Any, provider: str) -> str | None:
    """Why ``provider``'s library cannot load in this process (None when it can, or when it cannot be told).

    Only Linux libraries are inspected; elsewhere ONNX Runtime is left to try.
    """
    suffix = _LIBRARY.get(provider)
    if suffix is None or not sys.platform.startswith("linux"):
        return None
    return _library_problem(str(Path(ort.__file__).parent / "capi"), suffix)


def _dims(shape: tuple[int, ...]) -> str:
    return "x".join(str(d) for d in shape)


def trt_profile_options(version: Any) -> dict[str, str]:
    """TensorRT provider options with the first optimization profile of the bundle's build plan ({} without one)."""
    from edgeq.sdk.bundle.plan import BuildPlan

    plans = [f for f in version.manifest.files_with_role("plan") if f.path.endswith(".json")]
    if not plans:
        return {}
    plan = BuildPlan.from_json(version.read(plans[0].path).decode("utf-8"))
    inputs = plan.profiles[0].inputs
    return {f"trt_profile_{k}_shapes": ",".join(f"{i.name}:{_dims(getattr(i, k))}" for i in inputs)
            for k in ("min", "opt", "max")}


def gpu_providers(ort: Any, version: Any, device_id: int = 0) -> tuple[list[Any], list[str]]:
    """The provider list for a GPU session and the reasons for those left out.

    TensorRT (with the bundle's profile shapes) when its library loads, then CUDA when its library loads,
    then the CPU for the nodes neither takes.
    """
    have = set(ort.get_available_providers())
    chosen: list[Any] = []
    skipped: list[str] = []
    for name in (TRT_EP, CUDA_EP):
        if name not in have:
            continue
        why = provider_problem(ort, name)
        if why is not None:
            skipped.append(f"{name}: {why}")
            continue
        opts: dict[str, str] = {"device_id": str(device_id)}
        if name == TRT_EP:
            opts.update(trt_profile_options(version))
            if not any(k.startswith("trt_profile_") for k in opts):
                log.info("%s v%s has no build plan: TensorRT gets no profile shapes and builds per shape",
                         version.model, version.version)
        chosen.append((name, opts))
    chosen.append(CPU_EP)
    return chosen, skipped
