"""Is the rewritten model still the same model? onnx.checker + numeric comparison with ONNX Runtime."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx

from graphopt.errors import Unsupported, VerificationFailed

FP32_RTOL, FP32_ATOL = 1e-4, 1e-5

_NP_OF_ORT = {
    "tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
    "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int16)": np.int16, "tensor(int8)": np.int8,
    "tensor(uint64)": np.uint64, "tensor(uint32)": np.uint32, "tensor(uint16)": np.uint16,
    "tensor(uint8)": np.uint8, "tensor(bool)": np.bool_,
}


def check_model(model: onnx.ModelProto) -> None:
    """onnx.checker with full shape checking; raises VerificationFailed with the checker's message."""
    try:
        if model.ByteSize() < (2**31 - 1):
            onnx.checker.check_model(model, full_check=False)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise VerificationFailed(f"onnx.checker: {str(e).splitlines()[0]}") from None


def ort_session(model: onnx.ModelProto, optimize: bool = False, threads: int = 1):
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                     else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    try:
        return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    except Exception as e:
        raise Unsupported(f"ONNX Runtime cannot load the model: {str(e).splitlines()[0]}") from None


def with_outputs(model: onnx.ModelProto, tensors: list[str]) -> onnx.ModelProto:
    """A copy of `model` whose graph also outputs `tensors` (float intermediates), to read them."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    have = {o.name for o in m.graph.output}
    m.graph.output.extend(onnx.helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None)
                          for t in dict.fromkeys(tensors) if t not in have)
    return m


def tensor_reader(model: onnx.ModelProto, tensors: list[str]):
    """feed -> [value of each tensor in `tensors`]: ONNX Runtime (basic optimizations, which keep every
    named intermediate) on a copy of the model that also outputs them. Calibration, recovery and
    weight-rounding passes read intermediate activations through this."""
    import onnxruntime as ort
    m = with_outputs(model, tensors)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    opts.log_severity_level = 3
    sess = ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    tensors = list(tensors)
    return lambda feed: sess.run(tensors, feed)


def random_feed(model: onnx.ModelProto, seed: int = 0, dims: dict | None = None, default_dim: int = 2) -> dict:
    """Random inputs for every real graph input: floats ~ N(0,1), ints in [0, 3), bools 50/50.

    Symbolic dims take `dims[name]` or `default_dim`, consistently across inputs.
    """
    rng = np.random.default_rng(seed)
    inits = {t.name for t in model.graph.initializer}
    dims = dict(dims or {})
    feed = {}
    for inp in model.graph.input:
        if inp.name in inits:
            continue
        tt = inp.type.tensor_type
        shape = []
        for d in tt.shape.dim:
            if d.HasField("dim_value"):
                shape.append(d.dim_value)
            else:
                shape.append(dims.setdefault(d.dim_param or inp.name, default_dim))
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)
        if np.issubdtype(dtype, np.floating):
            feed[inp.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype == np.bool_:
            feed[inp.name] = np.asarray(rng.random(shape) < 0.5)  # rank 0: an array, not a numpy.bool ORT refuses
        elif np.issubdtype(dtype, np.integer):
            feed[inp.name] = np.asarray(rng.integers(0, 3, shape).astype(dtype))
        else:
            raise Unsupported(f"cannot make random data for input '{inp.name}' of type {dtype}")
    return feed


def run_ort(model: onnx.ModelProto, feed: dict, optimize: bool = False) -> dict:
    sess = ort_session(model, optimize=optimize)
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feed)))


@dataclass
class OutputError:
    name: str
    max_abs: float
    max_rel: float
    ok: bool
    note: str = ""


@dataclass
class CompareReport:
    outputs: list = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(o.ok for o in self.outputs)

    def summary(self) -> str:
        return "; ".join(f"{o.name}: max abs {o.max_abs:.3g}, max rel {o.max_rel:.3g}{' ' + o.note if o.note else ''}"
                         for o in self.outputs if not o.ok) or "all outputs match"


def compare_arrays(name: str, want: np.ndarray, got: np.ndarray, rtol=FP32_RTOL, atol=FP32_ATOL) -> OutputError:
    want, got = np.asarray(want), np.asarray(got)
    if want.shape != got.shape:
        return OutputError(name, float("inf"), float("inf"), False, f"shape {got.shape} != {want.shape}")
    if want.dtype != got.dtype:
        return OutputError(name, float("inf"), float("inf"), False, f"dtype {got.dtype} != {want.dtype}")
    if want.size == 0:
        return OutputError(name, 0.0, 0.0, True)
    if not np.issubdtype(want.dtype, np.number):
        same = bool(np.array_equal(want, got))
        return OutputError(name, 0.0 if same else 1.0, 0.0 if same else 1.0, same)
    w, g = want.astype(np.float64), got.astype(np.float64)
    both_nan = np.isnan(w) & np.isnan(g)
    diff = np.where(both_nan | (w == g), 0.0, np.abs(w - g))
    max_abs = float(np.nanmax(diff)) if diff.size else 0.0
    rel = diff / np.maximum(np.abs(w), 1e-30)
    max_rel = float(np.nanmax(np.where(diff == 0, 0.0, rel)))
    ok = bool(np.all(both_nan | (diff <= atol + rtol * np.abs(w))))
    return OutputError(name, max_abs, max_rel, ok)


def compare_models(reference: onnx.ModelProto, candidate: onnx.ModelProto, runs: int = 2, seed: int = 0,
                   rtol=FP32_RTOL, atol=FP32_ATOL, dims: dict | None = None, feeds=None) -> CompareReport:
    """Run both models in ONNX Runtime (optimizations off) on the same inputs; compare every output."""
    ref_sess, cand_sess = ort_session(reference), ort_session(candidate)
    names = [o.name for o in ref_sess.get_outputs()]
    cand_names = [o.name for o in cand_sess.get_outputs()]
    if names != cand_names:
        raise VerificationFailed(f"output names differ: {names} vs {cand_names}")
    report = CompareReport()
    worst: dict[str, OutputError] = {}
    feeds = feeds if feeds is not None else [random_feed(reference, seed + i, dims) for i in range(runs)]
    for feed in feeds:
        want = ref_sess.run(names, feed)
        cand_feed = {k: v for k, v in feed.items() if k in {i.name for i in cand_sess.get_inputs()}}
        got = cand_sess.run(names, cand_feed)
        for name, w, g in zip(names, want, got):
            err = compare_arrays(name, w, g, rtol, atol)
            prev = worst.get(name)
            if prev is None or (prev.ok and not err.ok) or err.max_abs > prev.max_abs:
                worst[name] = err
    report.outputs = [worst[n] for n in names]
    return report
