"""`Session(model, device="gpu")`: the GPU runtime (CuPy arrays end to end).

`Session.__new__` hands device="gpu" to `GpuSession`, so the public constructor stays one call.
Options (keyword-only): `gpu_fallback` (run ops without a GPU kernel on the CPU, with copies both
ways; otherwise they are an error at build), `precision` ("fp32", "tf32": float32 GEMMs on TF32
tensor cores, "fp16": float32 weights and feeds cast to float16, outputs cast back), `cuda_graph`
(capture a run per input-shape signature into a CUDA graph and replay it), `fuse` (codegen for
elementwise chains). Between runs CuPy's memory pool keeps freed blocks, so a run with the same
shapes allocates nothing new from the driver.

`run` returns NumPy arrays like every Session; `run_device` takes and returns CuPy arrays and
never copies to the host.
"""
from __future__ import annotations

import numpy as np

from graphopt.errors import Unsupported, UsageError
from graphopt.runtime.io_spec import check_feed_names, check_value, load_model, node_arg
from graphopt.runtime.session import DEVICE_SESSIONS, Session

PRECISIONS = ("fp32", "tf32", "fp16")


def require_gpu():
    """CuPy and at least one usable CUDA device, or one clear Unsupported error."""
    try:
        import cupy
    except Exception as e:  # ImportError, or a broken CUDA install raising at import
        raise Unsupported("device='gpu' needs CuPy and an NVIDIA GPU: install with pip install 'graphopt[gpu]' "
                          f"(importing cupy failed: {e})") from None
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:  # CUDARuntimeError: no driver, driver too old, no device
        raise Unsupported(f"device='gpu': CuPy is installed but no usable CUDA GPU was found ({e})") from None
    if count < 1:
        raise Unsupported("device='gpu': CuPy is installed but no CUDA GPU was found")
    return cupy


class GpuSession(Session):
    def __init__(self, model_or_path, device: str = "gpu", threads: int | None = None, *, providers=None,
                 sess_options=None, gpu_fallback: bool = False, precision: str = "fp32", cuda_graph: bool = False,
                 fuse: bool = True):
        if precision not in PRECISIONS:
            raise UsageError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        model = load_model(model_or_path)
        self.cp = require_gpu()
        from graphopt.runtime.gpu.plan import GpuPlan
        self.device, self.threads, self._limit, self._model = "gpu", threads, None, model
        self.precision, self.cuda_graph = precision, cuda_graph
        if precision == "fp16":
            model = _half_model(model)
        self._gpu = GpuPlan(model, fallback=gpu_fallback, fuse=fuse)
        self.fallback_ops = self._gpu.fallback_ops
        inits = {t.name for t in model.graph.initializer} | {s.values.name for s in model.graph.sparse_initializer}
        src = self._model.graph
        self._inputs = [node_arg(vi) for vi in src.input if vi.name not in inits]
        self._overridable = []
        self._outputs = [node_arg(vi) for vi in src.output]
        self._graphs: dict = {}
        self.cuda_graph_error: str | None = None  # why the last capture was refused, if one was

    def run(self, output_names, input_feed: dict, run_options=None) -> list:
        outs = self.run_device(output_names, input_feed)
        cp = self.cp
        host = [cp.asnumpy(o) if isinstance(o, cp.ndarray) else o for o in outs]
        if self.precision == "fp16":
            want = {a.name: a for a in self._outputs}
            names = output_names or [a.name for a in self._outputs]
            host = [h.astype(np.float32) if want[n].type == "tensor(float)" and h is not None else h
                    for n, h in zip(names, host)]
        return host

    def run_device(self, output_names, input_feed: dict) -> list:
        """Feed NumPy or CuPy arrays, get CuPy arrays (host-computed outputs such as a Shape come back
        as NumPy)."""
        if not isinstance(input_feed, dict):
            raise UsageError(f"feed must be a dict of input name -> array, got {type(input_feed).__name__}")
        feeds = self._device_feed(input_feed)
        from graphopt.kernels.gpu.linalg import compute_types
        with compute_types(self.precision == "tf32"):
            if self.cuda_graph:
                outs = self._run_graph(feeds)
            else:
                outs = self._gpu.run(feeds)
        names = [o.name for o in self._outputs]
        if output_names is None:
            return outs
        index = {n: i for i, n in enumerate(names)}
        missing = [n for n in output_names if n not in index]
        if missing:
            raise UsageError(f"unknown output name(s) {missing}; the model's outputs are {names}")
        return [outs[index[n]] for n in output_names]

    def _device_feed(self, feed: dict) -> dict:
        cp = self.cp
        known = {a.name: a for a in self._inputs}
        check_feed_names(feed, known)
        out = {}
        for name, value in feed.items():
            if isinstance(value, cp.ndarray):
                _check_meta(known[name], value)
                dev = value
            else:
                dev = cp.asarray(check_value(known[name], value))
            if self.precision == "fp16" and dev.dtype == np.float32:
                dev = dev.astype(np.float16)
            out[name] = dev
        return out

    def _run_graph(self, feeds: dict) -> list:
        """Replay a captured CUDA graph for this shape signature; capture one (after an ordinary warm-up
        run that compiles kernels and fills the shape cache) the first time. A plan that needs the host
        inside a run (fallbacks, data-dependent shapes) cannot be captured: it runs normally."""
        cp = self.cp
        plan = self._gpu
        if not plan.cacheable:
            return plan.run(feeds)
        key = plan.shape_key(feeds)
        entry = self._graphs.get(key)
        if entry is None:
            entry = self._graphs[key] = self._capture(feeds)
        if entry is False:  # this signature could not be captured: ordinary runs
            return plan.run(feeds)
        graph, static, outs, stream = entry
        stream.wait_event(cp.cuda.get_current_stream().record())  # feeds were made on the caller's stream
        with stream:
            for n, v in feeds.items():
                static[n][...] = v
            graph.launch(stream)
        stream.synchronize()
        return [o.copy() if isinstance(o, cp.ndarray) else o for o in outs]

    def _capture(self, feeds: dict):
        """(graph, static feeds, outputs, stream), or False when the run cannot be captured (a kernel
        that copies host data or syncs inside the run). The warm-up runs on the capture stream with
        the same keep-everything policy, so every block the capture asks for is already in CuPy's
        pool for that stream and capturing allocates nothing from the driver."""
        cp = self.cp
        plan = self._gpu
        stream = cp.cuda.Stream(non_blocking=True)
        static = {n: v.copy() for n, v in feeds.items()}
        stream.wait_event(cp.cuda.get_current_stream().record())
        with stream:
            plan.run(static, keep_all=True)  # NVRTC compiles, host values cached, pool filled
            stream.synchronize()
            stream.begin_capture()
            try:
                outs = plan.run(static, keep_all=True)  # keep_all: no block is reused outside the graph
            except Exception as e:
                try:
                    stream.end_capture()
                except Exception:  # the failed capture is already invalidated
                    pass
                self.cuda_graph_error = f"{type(e).__name__}: {e}"
                return False
            graph = stream.end_capture()
        return graph, static, outs, stream


def _check_meta(arg, value):
    """Shape check of a CuPy feed (dtype is the caller's business on the device path)."""
    if arg.shape is not None:
        if len(arg.shape) != value.ndim or any(isinstance(d, int) and d and d != g
                                               for d, g in zip(arg.shape, value.shape)):
            raise UsageError(f"input {arg.name!r}: expected shape {arg.shape}, got {list(value.shape)}")


def _half_model(model):
    """A copy computing in float16 for precision="fp16": float32 initializers, Constant tensors,
    inputs/outputs and Cast targets become float16 (top-level graph only)."""
    import onnx
    from onnx import numpy_helper
    m = onnx.ModelProto()
    m.CopyFrom(model)
    F, H = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16

    def half(a):  # finite values beyond float16's range (-1e9 mask constants) saturate, not become inf
        return np.where(np.isfinite(a), np.clip(a, -65504, 65504), a).astype(np.float16)
    for t in m.graph.initializer:
        if t.data_type == F:
            t.CopyFrom(numpy_helper.from_array(half(numpy_helper.to_array(t)), t.name))
    for n in m.graph.node:
        if n.op_type == "Cast":  # casts to float32 become casts to float16: one float type throughout
            for a in n.attribute:
                if a.name == "to" and a.i == F:
                    a.i = H
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value" and a.t.data_type == F:
                    a.t.CopyFrom(numpy_helper.from_array(half(numpy_helper.to_array(a.t)), a.t.name))
    for vi in list(m.graph.input) + list(m.graph.output):
        if vi.type.tensor_type.elem_type == F:
            vi.type.tensor_type.elem_type = H
    del m.graph.value_info[:]
    return m


DEVICE_SESSIONS["gpu"] = GpuSession
