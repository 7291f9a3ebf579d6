"""What this device is, and whether a bundle's artifacts can run on it — decided before any engine byte is read.

The probe never imports tensorrt or tensorrt_rtx (importing them costs seconds and GPU memory): installed
TensorRT flavours and versions come from ``importlib.metadata``. The GPU's compute capability comes from
``nvidia-smi`` or, without it, the CUDA driver API through ctypes; no GPU means a CPU-only device, which
can still run a bundle's ONNX through ONNX Runtime.
"""

from __future__ import annotations

import ctypes
import importlib.metadata as md
import shutil
import subprocess
from dataclasses import dataclass, field

from edgeq._version import __version__
from edgeq.errors import ConfigError, IncompatibleBundleError
from edgeq.sdk.bundle.flavours import ENGINE_FLAVOURS, TENSORRT_FLAVOURS, engine_flavour
from edgeq.sdk.bundle.manifest import EngineInfo, Manifest


def normalize_cc(cc: str) -> str:
    """``"8.9"``, ``"89"``, ``"sm89"``, ``"sm_89"`` → ``"8.9"``."""
    s = str(cc).strip().lower().removeprefix("sm").lstrip("_")
    if "." in s:
        major, _, minor = s.partition(".")
    elif s.isdigit() and len(s) >= 2:
        major, minor = s[:-1], s[-1]
    else:
        raise ConfigError(f"not a compute capability: {cc!r}")
    if not (major.isdigit() and minor.isdigit()):
        raise ConfigError(f"not a compute capability: {cc!r}")
    return f"{int(major)}.{int(minor)}"


def _version_tuple(v: str) -> tuple[int, ...]:
    out = []
    for part in v.split("."):
        digits = "".join(ch for ch in part if ch.isdigit())
        if not digits:
            break
        out.append(int(digits))
    return tuple(out)


def version_at_least(have: str, need: str) -> bool:
    return _version_tuple(have) >= _version_tuple(need)


def same_trt_version(built: str, have: str) -> bool:
    """Engines are tied to the library release that built them: major.minor.patch must match."""
    return _version_tuple(built)[:3] == _version_tuple(have)[:3]


@dataclass(frozen=True)
class DeviceInfo:
    """This device: GPU compute capability (None = CPU only), installed engine libraries, runtime version."""

    compute_capability: str | None
    trt_versions: dict[str, str] = field(default_factory=dict)
    runtime_version: str = __version__
    gpu_name: str | None = None

    def __post_init__(self) -> None:
        if self.compute_capability is not None:
            object.__setattr__(self, "compute_capability", normalize_cc(self.compute_capability))
        object.__setattr__(self, "trt_versions", dict(self.trt_versions))

    @property
    def cpu_only(self) -> bool:
        return self.compute_capability is None

    def to_dict(self) -> dict[str, object]:
        return {"compute_capability": self.compute_capability, "gpu_name": self.gpu_name, "cpu_only": self.cpu_only,
                "trt_versions": dict(self.trt_versions), "runtime_version": self.runtime_version}


def _cc_from_nvidia_smi() -> tuple[str, str] | None:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, "--query-gpu=compute_cap,name", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    line = out.strip().splitlines()[0] if out.strip() else ""
    cc, _, name = line.partition(",")
    try:
        return normalize_cc(cc), name.strip()
    except ConfigError:
        return None


def _cc_from_driver() -> tuple[str, str] | None:
    # CUDA driver API; attribute ids 75/76 are COMPUTE_CAPABILITY_MAJOR/MINOR.
    for lib in ("libcuda.so.1", "libcuda.so", "nvcuda.dll"):
        try:
            cuda = ctypes.CDLL(lib)
            break
        except OSError:
            continue
    else:
        return None
    try:
        dev, major, minor = ctypes.c_int(), ctypes.c_int(), ctypes.c_int()
        if cuda.cuInit(0) != 0 or cuda.cuDeviceGet(ctypes.byref(dev), 0) != 0:
            return None
        if cuda.cuDeviceGetAttribute(ctypes.byref(major), 75, dev) != 0:
            return None
        if cuda.cuDeviceGetAttribute(ctypes.byref(minor), 76, dev) != 0:
            return None
        name = ctypes.create_string_buffer(256)
        cuda.cuDeviceGetName(name, 256, dev)
        return f"{major.value}.{minor.value}", name.value.decode(errors="replace")
    except (AttributeError, OSError):
        return None


def installed_trt_versions() -> dict[str, str]:
    """{flavour: version} of the TensorRT libraries installed here, read from package metadata only."""
    dists = md.packages_distributions()
    found: dict[str, str] = {}
    for flavour in TENSORRT_FLAVOURS:  # the module is looked up in package metadata, never imported
        for dist in dists.get(ENGINE_FLAVOURS[flavour].module, ()):
            try:
                found[flavour] = md.version(dist)
                break
            except md.PackageNotFoundError:
                continue
    return found


_PROBED: DeviceInfo | None = None


def probe(*, refresh: bool = False) -> DeviceInfo:
    """Probe this device (GPU compute capability, TensorRT flavours, edgeq runtime version).

    The result is cached for the process (nvidia-smi costs ~100 ms and the hardware does not change
    under a running process); ``refresh=True`` probes again.
    """
    global _PROBED
    if _PROBED is None or refresh:
        gpu = _cc_from_nvidia_smi() or _cc_from_driver()
        _PROBED = DeviceInfo(
            compute_capability=gpu[0] if gpu else None,
            gpu_name=gpu[1] if gpu else None,
            trt_versions=installed_trt_versions(),
        )
    return _PROBED


# -- compatibility ------------------------------------------------------------------------------
def engine_problem(engine: EngineInfo, device: DeviceInfo) -> str | None:
    """Why ``engine`` cannot run on ``device`` (None when it can). Both values are in every message."""
    if not engine_flavour(engine.flavour).tensorrt:  # the QDQ ONNX itself: ONNX Runtime runs it anywhere
        return None
    ccs = [normalize_cc(c) for c in engine.compute_capabilities]
    if device.cpu_only:
        return f"{engine.flavour} engine needs a GPU (compute capability {', '.join(ccs) or '?'}), this device is CPU-only"
    if engine.path is not None and device.compute_capability not in ccs:
        return (f"{engine.flavour} engine {engine.path} was built for compute capability {', '.join(ccs) or '?'}, "
                f"this device is {device.compute_capability}")
    have = device.trt_versions.get(engine.flavour)
    if have is None:
        return f"{engine.flavour} engine {engine.path or engine.plan} needs {engine.flavour} {engine.trt_version or ''}".rstrip() \
            + ", which is not installed on this device"
    if engine.path is not None and engine.trt_version and not same_trt_version(engine.trt_version, have):
        return (f"{engine.flavour} engine {engine.path} was built with {engine.flavour} {engine.trt_version}, "
                f"this device has {have}")
    return None


def check_engine(engine: EngineInfo, device: DeviceInfo) -> None:
    """Raise IncompatibleBundleError before any deserialization when ``engine`` cannot run here."""
    if (problem := engine_problem(engine, device)) is not None:
        raise IncompatibleBundleError(problem, hint="install a bundle built for this device's target")


def usable_engines(manifest: Manifest, device: DeviceInfo) -> list[EngineInfo]:
    return [e for e in manifest.engines if engine_problem(e, device) is None]


def check_compatible(manifest: Manifest, device: DeviceInfo) -> list[EngineInfo]:
    """The engines of ``manifest`` this device can run; IncompatibleBundleError when none (or runtime too old)."""
    if not version_at_least(device.runtime_version, manifest.min_runtime_version):
        raise IncompatibleBundleError(
            f"bundle needs edgeq runtime >= {manifest.min_runtime_version}, this device has {device.runtime_version}",
            hint="upgrade edgeq on the device",
        )
    if not manifest.engines:
        raise IncompatibleBundleError(f"bundle {manifest.model_name} v{manifest.bundle_version} has no runnable artifact")
    usable = usable_engines(manifest, device)
    if not usable:
        problems = "; ".join(p for e in manifest.engines if (p := engine_problem(e, device)))
        raise IncompatibleBundleError(
            f"bundle {manifest.model_name} v{manifest.bundle_version} cannot run on this device: {problems}",
            hint="install a bundle built for this device's target",
        )
    return usable
