"""ONNX Runtime IOBinding for the decode loop: the KV cache and the logits stay in buffers on the session's device.

On CUDA the buffers come from the device-memory layer (``cudart``) and are bound by pointer; the step's
host inputs (token ids, mask, positions: a few bytes a row) are bound as CPU arrays, which ONNX Runtime
copies over; the logits are bound to a device buffer too, and a five-node ONNX graph on the same
execution provider takes the argmax of the last position, so a greedy step brings back one int64 per row.
The last position's logits come back only when asked (sampling, the monitor's live statistics), in one
2-D copy. On the CPU the same binder binds host buffers: nothing is concatenated or allocated per step.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from edgeq.sdk.runtime.backends import cudart
from edgeq.sdk.runtime.backends.binding import Binder, Buffer, HostBuffer

log = logging.getLogger(__name__)

#: ``next_tokens[b, 0] = argmax(logits[b, -1, :])``: Slice(axis 1, -1:) then ArgMax(axis 2, keepdims 0).
#: Built with onnx.helper (opset 17, IR 8); tests/sdk/runtime/test_kv_binding.py rebuilds it and compares.
GREEDY_LAST_ONNX = bytes.fromhex(
    "0808120565646765713ae4020a3812067374617274732208436f6e7374616e742a240a0576616c75652a18080110073a0aff"
    "ffffffffffffffff014206737461727473a001040a331204656e64732208436f6e7374616e742a210a0576616c75652a1508"
    "0110073a098080808080808080404204656e6473a001040a2b1204617865732208436f6e7374616e742a190a0576616c7565"
    "2a0d080110073a0101420461786573a001040a290a066c6f676974730a067374617274730a04656e64730a04617865731204"
    "6c6173742205536c6963650a390a046c617374120b6e6578745f746f6b656e7322064172674d61782a0b0a04617869731802"
    "a001022a0f0a086b65657064696d731800a00102121165646765715f6772656564795f6c6173745a290a066c6f6769747312"
    "1f0a1d080112190a07120562617463680a0512037365710a071205766f63616262220a0b6e6578745f746f6b656e7312130a"
    "110807120d0a07120562617463680a02080142040a001011"
)


class _Bind:
    """``bind_input`` / ``bind_output`` by pointer, through the binding's pybind object when it has one.

    The public wrappers re-make the ``OrtDevice`` and check WebGPU capture state on every call; a decode
    step rebinds every past and present (4 per layer), so that costs more than the rest of the step's
    Python. The pybind ``SessionIOBinding`` methods take the same arguments plus a ready C device.
    """

    def __init__(self, ort: Any, io: Any, device: str, device_id: int) -> None:
        self._io, self._device, self._id = io, device, device_id
        raw = getattr(io, "_iobinding", None)
        try:
            cdev = ort.OrtDevice.make(device, device_id)._get_c_device()
        except AttributeError:
            raw = None
        if raw is not None:
            self.input = lambda name, dt, shape, ptr: raw.bind_input(name, cdev, dt, shape, ptr)
            self.output = lambda name, dt, shape, ptr: raw.bind_output(name, cdev, dt, shape, ptr)
        else:
            self.input = lambda name, dt, shape, ptr: io.bind_input(name, device, device_id, dt, shape, ptr)
            self.output = lambda name, dt, shape, ptr: io.bind_output(name, device, device_id, dt, shape, ptr)
        self.fast = raw is not None


class GreedySampler:
    """The greedy token of the last position, computed on the device by ``GREEDY_LAST_ONNX``."""

    def __init__(self, ort: Any, providers: list[Any]) -> None:
        so = ort.SessionOptions()
        so.log_severity_level = 3
        self.session = ort.InferenceSession(GREEDY_LAST_ONNX, so, providers=providers)


class SamplerBinding:
    """One binder's IOBinding of the :class:`GreedySampler`: logits in by pointer, one int64 per row out.

    The output is bound to the host by device only, so ONNX Runtime allocates it at the first run and keeps
    that value bound; a run with another batch size would then fail on the shape. So whenever the logits'
    shape or buffer changes, both bindings are made again (the output unallocated).
    """

    def __init__(self, ort: Any, sampler: GreedySampler, device: str, device_id: int) -> None:
        self._sess = sampler.session
        self._io = self._sess.io_binding()
        self._bind_in = _Bind(ort, self._io, device, device_id).input
        self._bound: tuple[tuple[int, int, int], int] | None = None

    def run(self, shape: tuple[int, int, int], ptr: int) -> np.ndarray:
        if (shape, ptr) != self._bound:
            self._bind_in("logits", np.float32, shape, ptr)
            self._io.clear_binding_outputs()
            self._io.bind_output("next_tokens", "cpu")
            self._bound = (shape, ptr)
        self._sess.run_with_iobinding(self._io)
        return self._io.copy_outputs_to_cpu()[0].reshape(-1)


class OrtBinder(Binder):
    """IOBinding of one ONNX Runtime session for one generation at a time (see ``binding.Binder``)."""

    def __init__(self, ort: Any, session: Any, *, device: str, device_id: int, logits_name: str,
                 vocab: int, logits_dtype: np.dtype, sampler: GreedySampler | None = None,
                 fast_bind: bool = True) -> None:
        self.device = device
        self._sess, self._io = session, session.io_binding()
        b = _Bind(ort, self._io, device, device_id) if fast_bind else _Bind(ort, _NoRaw(self._io), device, device_id)
        self._bind_in, self._bind_out = b.input, b.output
        self._logits_name, self._vocab = logits_name, int(vocab)
        self._ldtype = np.dtype(logits_dtype)
        self._logits = self.new_buffer()
        self._rows = self._n = 0
        self._logits_bound: tuple[tuple[int, int, int], int] | None = None
        self._tokens: np.ndarray | None = None
        self._sampler_io: SamplerBinding | None = None
        if sampler is not None and device == "cuda" and self._ldtype == np.float32:
            self._sampler_io = SamplerBinding(ort, sampler, device, device_id)
        self._on_cuda = device == "cuda"

    def new_buffer(self) -> Buffer:
        return cudart.DeviceBuffer() if self.device == "cuda" else HostBuffer()

    def bind(self, name: str, ptr: int, dtype: np.dtype, shape: tuple[int, ...], *, output: bool) -> None:
        (self._bind_out if output else self._bind_in)(name, dtype.type, shape, ptr)

    def bind_many(self, dtype: np.dtype, items: list[tuple[str, int, tuple[int, ...], bool]]) -> None:
        bind_in, bind_out, t = self._bind_in, self._bind_out, dtype.type
        for name, ptr, shape, output in items:
            (bind_out if output else bind_in)(name, t, shape, ptr)

    def feed(self, name: str, array: np.ndarray) -> None:
        array = np.ascontiguousarray(array)
        if name == "input_ids":
            self._rows, self._n = array.shape
        self._io.bind_cpu_input(name, array)
        if self._on_cuda:  # ONNX Runtime copies a CPU-bound input to the device at run
            cudart.COPIES.record("h2d", name, array.nbytes)

    def run(self) -> None:
        shape = (self._rows, self._n, self._vocab)
        ptr = self._logits.reserve(self._rows * self._n * self._vocab * self._ldtype.itemsize)
        if (shape, ptr) != self._logits_bound:  # decode steps keep the (batch, 1, vocab) binding
            self._bind_out(self._logits_name, self._ldtype.type, shape, ptr)
            self._logits_bound = (shape, ptr)
        self._sess.run_with_iobinding(self._io)
        self._tokens = None
        if self._sampler_io is not None:
            try:
                self._tokens = self._sampler_io.run(shape, ptr)
                cudart.COPIES.record("d2h", "next_tokens", self._tokens.nbytes)
            except Exception as exc:  # a provider without the ops: sample on the host from the copied logits
                log.warning("greedy sampling on the device failed (%s); sampling on the host from now on",
                            str(exc).splitlines()[0][:200])
                self._sampler_io = None

    def last_logits(self) -> np.ndarray:
        rows, n, v = self._rows, self._n, self._vocab
        item = self._ldtype.itemsize
        if isinstance(self._logits, HostBuffer):
            out = self._logits.view(0, self._ldtype, (rows, n, v))[:, -1, :].copy()
        else:
            out = np.empty((rows, v), self._ldtype)
            cudart.copy_rows_d2h(out, self._logits.ptr + (n - 1) * v * item, n * v * item, tag="logits")
        return out.astype(np.float32, copy=False)

    def next_tokens(self) -> np.ndarray | None:
        return self._tokens

    def close(self) -> None:
        self._logits.free()
        self._io = self._sampler_io = None


class _NoRaw:
    """An IOBinding seen without its pybind object (forces the public API; used by a test)."""

    def __init__(self, io: Any) -> None:
        self._wrapped = io

    def __getattr__(self, name: str) -> Any:
        if name == "_iobinding":
            raise AttributeError(name)
        return getattr(self._wrapped, name)
