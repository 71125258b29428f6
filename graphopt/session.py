"""Session: run an ONNX model with graphopt's NumPy kernels, shaped like onnxruntime.InferenceSession.

Everything that does not depend on the feed is done once, at build: the topological plan, constants
turned into arrays, attributes resolved with schema defaults, each node bound to its kernel, and
the liveness of every value (a value is dropped right after its last use). `run` then calls one
generated straight-line function of kernel calls (graphopt/plan_codegen.py), specialized per input
shape signature where the model computes shapes at run time (graphopt/plan_specialize.py).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper

from .errors import InvalidModel, Unsupported, UsageError
from .blas_threads import thread_limiter
from .memory import keep_freed_memory
from .plan import BuildContext, KernelFailed, Plan, opset_map  # noqa: F401  (KernelFailed: re-exported)
from .profile import Profile
from .session_fast import build_fast_run

_ELEM_NAMES = {v: k.lower() for k, v in onnx.TensorProto.DataType.items()}


def type_string(tp: onnx.TypeProto) -> str:
    """ORT's spelling of a type: tensor(float), seq(tensor(int64)), optional(...)."""
    kind = tp.WhichOneof("value")
    if kind == "tensor_type":
        elem = tp.tensor_type.elem_type
        return f"tensor({_ELEM_NAMES.get(elem, 'undefined')})"
    if kind == "sequence_type":
        return f"seq({type_string(tp.sequence_type.elem_type)})"
    if kind == "optional_type":
        return f"optional({type_string(tp.optional_type.elem_type)})"
    if kind == "map_type":
        key = _ELEM_NAMES.get(tp.map_type.key_type, "undefined")
        return f"map({key},{type_string(tp.map_type.value_type)})"
    if kind == "sparse_tensor_type":
        return f"sparse_tensor({_ELEM_NAMES.get(tp.sparse_tensor_type.elem_type, 'undefined')})"
    return "unknown"


@dataclass
class NodeArg:
    """What get_inputs()/get_outputs() return: the fields of onnxruntime.NodeArg."""
    name: str
    shape: list | None
    type: str
    type_proto: onnx.TypeProto = field(repr=False, default=None)

    def __repr__(self):
        return f"NodeArg(name={self.name!r}, type={self.type!r}, shape={self.shape!r})"


def node_arg(vi: onnx.ValueInfoProto) -> NodeArg:
    shape = None
    tt = vi.type.tensor_type if vi.type.HasField("tensor_type") else None
    if tt is not None and tt.HasField("shape"):
        shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim]
    return NodeArg(vi.name, shape, type_string(vi.type), vi.type)


class Session:
    """`Session(model_or_path, device="cpu", threads=None)`; `.run(output_names, feed)`.

    `threads` caps the BLAS thread pool for runs (see graphopt/blas_threads.py: OpenBLAS's own
    setter, else threadpoolctl when installed; `threads_applied` says whether either worked; the
    cap stays in force after run returns);
    `providers`/`sess_options` are accepted and ignored so ORT call sites work unchanged.
    `run(..., profile=True)` times every node and measures the peak bytes held by intermediates
    (`last_profile`, `peak_activation_bytes`)."""

    def __new__(cls, *args, **kwargs):
        # device="gpu" is the GPU runtime (graphopt/gpu_session.py); it imports CuPy, the CPU path never does
        device = kwargs.get("device", args[1] if len(args) > 1 else "cpu")
        if cls is Session and device == "gpu":
            from .gpu_session import GpuSession
            return super().__new__(GpuSession)
        return super().__new__(cls)

    def __init__(self, model_or_path, device: str = "cpu", threads: int | None = None, *,
                 providers=None, sess_options=None):
        model = load_model(model_or_path)
        if device not in ("cpu", "gpu"):
            raise UsageError(f"device must be 'cpu' or 'gpu', got {device!r}")
        self.device = device
        self.threads = threads
        self._limit = thread_limiter(threads)
        self.threads_applied = self._limit is not None
        self.last_profile: Profile | None = None
        self._specs: dict = {}  # input name -> what a valid feed looks like (see _fast_spec)
        self._fast_run = None  # run's common case (_build_fast_run)
        self._model = model
        keep_freed_memory()  # the next run reuses this run's pages (see graphopt/memory.py)
        _import_kernels(device)
        functions = {(f.domain, f.name): f for f in model.functions}
        ctx = BuildContext(device=device, functions=functions)
        try:
            self._plan = Plan.from_graph(model.graph, opset_map(model.opset_import), ctx, nested=False)
        except (KeyError, ValueError, TypeError) as e:
            raise InvalidModel(f"cannot build a plan for the model: {e}") from e
        if ctx.unsupported:
            listed = ", ".join(f"{d or 'ai.onnx'}::{op} (opset {v})" for d, op, v in sorted(ctx.unsupported))
            raise Unsupported(f"graphopt runtime ({device}) has no kernel for: {listed}")
        inits = {t.name for t in model.graph.initializer} | {
            s.values.name for s in model.graph.sparse_initializer}
        self._inputs = [node_arg(vi) for vi in model.graph.input if vi.name not in inits]
        self._overridable = [node_arg(vi) for vi in model.graph.input if vi.name in inits]
        self._outputs = [node_arg(vi) for vi in model.graph.output]

    # --- the onnxruntime.InferenceSession surface -------------------------------------------
    def get_inputs(self) -> list[NodeArg]:
        return list(self._inputs)

    def get_outputs(self) -> list[NodeArg]:
        return list(self._outputs)

    def get_overridable_initializers(self) -> list[NodeArg]:
        return list(self._overridable)

    def run(self, output_names, input_feed: dict, run_options=None, *, profile: bool = False) -> list:
        if output_names is None and not profile and type(input_feed) is dict:
            fast = self._fast_run if self._fast_run is not None else self._build_fast_run()
            outputs = fast(input_feed) if fast else None
            if outputs is not None:
                return outputs
        if not isinstance(input_feed, dict):
            raise UsageError(f"feed must be a dict of input name -> array, got {type(input_feed).__name__}")
        feeds = self._check_feed(input_feed)
        prof = Profile() if profile else None
        if self._limit is not None:
            self._limit()
        outputs = self._plan.run_named(feeds, None, prof)
        if prof is not None:
            self.last_profile = prof
        if output_names is None:
            return _as_outputs(outputs)
        names = [o.name for o in self._outputs]
        index = {n: i for i, n in enumerate(names)}
        missing = [n for n in output_names if n not in index]
        if missing:
            raise UsageError(f"unknown output name(s) {missing}; the model's outputs are {names}")
        return [_as_output(outputs[index[n]]) for n in output_names]

    def _build_fast_run(self):
        """fn(feed) -> outputs, or None when the feed is not the common case (graphopt/session_fast.py).
        Built at the first run; False when an input's type cannot be checked that way (sequences,
        optionals, ...)."""
        specs = [(a.name, _fast_spec(a)) for a in self._inputs]
        if not all(spec for _, spec in specs):
            self._fast_run = False
            return False
        self._fast_run = build_fast_run(specs, self._plan._input_defaults, self._plan, self._limit, _as_outputs)
        return self._fast_run

    @property
    def peak_activation_bytes(self) -> int | None:
        """Peak bytes held by intermediate values (not weights, not feeds) in the last profiled run."""
        return None if self.last_profile is None else self.last_profile.peak_activation_bytes

    @property
    def folded_nodes(self) -> int:
        """Nodes with constant inputs that the plan ran once at build instead of at every run."""
        return self._plan.folded

    def _check_feed(self, feed: dict) -> dict:
        """The feed, converted where needed; raises UsageError naming a bad input (the common case,
        a feed that needs nothing, takes run's fast path and never comes here)."""
        known = {a.name: a for a in self._inputs}
        overridable = {a.name: a for a in self._overridable}
        check_feed_names(feed, known, overridable)
        checked = {}
        specs = self._specs
        for name, value in feed.items():
            spec = specs.get(name)
            if spec is None:
                arg = known.get(name) or overridable[name]
                spec = specs[name] = _fast_spec(arg)
            if not _fits(spec, value):
                value = _check_value(known.get(name) or overridable[name], value)  # converts, or says what is wrong
            checked[name] = value
        return checked


def check_feed_names(feed: dict, known: dict, overridable=()) -> None:
    """UsageError for a feed name the model does not have (initializers in `overridable` may be
    fed) or a model input the feed lacks."""
    extra = [k for k in feed if k not in known and k not in overridable]
    if extra:
        raise UsageError(f"feed has unknown input(s) {extra}; the model's inputs are {list(known)}")
    missing = [k for k in known if k not in feed]
    if missing:
        raise UsageError(f"missing input(s) {missing}; the model's inputs are {list(known)}")


def _fast_spec(arg: NodeArg):
    """(dtype, rank, fixed dims) for an input a plain ndarray can be checked against, else ()."""
    tp = arg.type_proto
    if tp is None or not tp.HasField("tensor_type") or not tp.tensor_type.elem_type \
            or not tp.tensor_type.HasField("shape"):
        return ()
    from graphopt.kernels.cpu._util import np_dtype
    want = np_dtype(tp.tensor_type.elem_type)
    if want == object:
        return ()
    dims = tp.tensor_type.shape.dim
    return (want, len(dims), [(i, d.dim_value) for i, d in enumerate(dims) if d.HasField("dim_value")])


def _fits(spec, value) -> bool:
    """`value` is a plain ndarray that _fast_spec's (dtype, rank, fixed dims) accepts as it is."""
    return bool(spec) and type(value) is np.ndarray and value.dtype == spec[0] and value.ndim == spec[1] \
        and all(value.shape[i] == d for i, d in spec[2])


def _as_outputs(outputs: list) -> list:
    for r in outputs:
        if type(r) is not np.ndarray:  # rare (NumPy scalars, sequences): converted where needed
            return [_as_output(r) for r in outputs]
    return outputs


def _as_output(value):
    if isinstance(value, np.ndarray) or value is None or isinstance(value, list):
        return value
    return np.asarray(value)


def _check_value(arg: NodeArg, value):
    tp = arg.type_proto
    if tp is None or not tp.HasField("tensor_type"):
        return value  # sequences, optionals, maps: passed through as given
    elem = tp.tensor_type.elem_type
    from graphopt.kernels.cpu._util import np_dtype
    want = np_dtype(elem) if elem else None
    if not isinstance(value, np.ndarray):
        try:
            value = np.asarray(value, dtype=want if want is not None and want != object else None)
        except (TypeError, ValueError) as e:
            raise UsageError(f"input {arg.name!r}: expected {arg.type}, got {type(value).__name__}") from e
    if want is not None:
        got = value.dtype
        ok = got == want or (want == object and got.kind in "OUS")
        if not ok:
            got_s = f"tensor({_ELEM_NAMES.get(_np_elem(got), str(got))})"
            raise UsageError(f"input {arg.name!r}: expected {arg.type}, got {got_s}")
        if want == object and got.kind in "US":
            value = value.astype(object)
    if tp.tensor_type.HasField("shape"):
        dims = tp.tensor_type.shape.dim
        if value.ndim != len(dims):
            raise UsageError(f"input {arg.name!r}: expected rank {len(dims)} (shape {arg.shape}), "
                             f"got rank {value.ndim} (shape {list(value.shape)})")
        for i, (d, got) in enumerate(zip(dims, value.shape)):
            if d.HasField("dim_value") and d.dim_value != got:
                raise UsageError(f"input {arg.name!r}: expected shape {arg.shape}, got {list(value.shape)} "
                                 f"(dimension {i} must be {d.dim_value})")
    return value


def _np_elem(dtype) -> int:
    try:
        return helper.np_dtype_to_tensor_dtype(dtype)
    except (KeyError, ValueError, TypeError):
        return 0


def load_model(model_or_path) -> onnx.ModelProto:
    """The compiler's loader, with all its checks (graphopt.ir.load_model): a Session reads models
    from strangers too. A missing file is a usage error here, as in onnxruntime."""
    from graphopt import ir
    if isinstance(model_or_path, (str, os.PathLike)) and not os.path.exists(model_or_path):
        raise UsageError(f"model file not found: {os.fspath(model_or_path)}")
    return ir.load_model(model_or_path)


def _import_kernels(device: str):
    import graphopt.kernels.cpu  # noqa: F401  (registers the CPU kernels)
    if device != "cpu":
        try:
            import graphopt.kernels.gpu  # noqa: F401
        except ImportError:
            pass
