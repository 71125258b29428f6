"""Session: run an ONNX model with graphopt's NumPy kernels, shaped like onnxruntime.InferenceSession.

Everything that does not depend on the feed is done once, at build: the topological plan, constants
turned into arrays, attributes resolved with schema defaults, each node bound to its kernel, and
the liveness of every value (a value is dropped right after its last use). `run` then calls one
generated straight-line function of kernel calls (runtime/plan/codegen.py), specialized per input
shape signature where the model computes shapes at run time (runtime/plan/specialize.py).
"""
from __future__ import annotations

import inspect

from graphopt.errors import InvalidModel, Unsupported, UsageError
from graphopt.runtime.host.blas_threads import thread_limiter
from graphopt.runtime.host.memory import keep_freed_memory
from graphopt.ir.attributes import opset_map
from graphopt.runtime.io_spec import (NodeArg, as_output, as_outputs, check_feed_names, check_value, feed_spec, fits_spec,
                                      load_model, node_arg)
from graphopt.runtime.plan import BuildContext, Plan
from graphopt.runtime.plan.profile import Profile
from graphopt.runtime.fast_run import build_fast_run

# device name -> the Session subclass that runs it; runtime/gpu/session.py registers "gpu", so this
# module never imports the GPU runtime (it sits above this one)
DEVICE_SESSIONS: dict[str, type] = {}


class Session:
    """`Session(model_or_path, device="cpu", threads=None)`; `.run(output_names, feed)`.

    `threads` caps the BLAS thread pool for runs (see runtime/host/blas_threads.py: OpenBLAS's own
    setter, else threadpoolctl when installed; `threads_applied` says whether either worked; the
    cap stays in force after run returns);
    `providers`/`sess_options` are accepted and ignored so ORT call sites work unchanged.
    `run(..., profile=True)` times every node and measures the peak bytes held by intermediates
    (`last_profile`, `peak_activation_bytes`)."""

    def __new__(cls, *args, **kwargs):
        # device="gpu" is the GPU runtime (runtime/gpu/session.py, registered in DEVICE_SESSIONS); it
        # imports CuPy, the CPU path never does
        device = kwargs.get("device", args[1] if len(args) > 1 else "cpu")
        if cls is Session and device in DEVICE_SESSIONS:
            return super().__new__(DEVICE_SESSIONS[device])
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
        self._specs: dict = {}  # input name -> what a valid feed looks like (see feed_spec)
        self._fast_run = None  # run's common case (_build_fast_run)
        self._model = model
        keep_freed_memory()  # the next run reuses this run's pages (see runtime/host/memory.py)
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
        """Run the model; returns the outputs as a list of NumPy arrays, in the order asked.

        output_names: the outputs to return, or None for all, in the model's order.
        input_feed: input name -> array (or anything np.asarray takes); dtypes and fixed dims are
        checked, a wrong one raises UsageError naming the input.
        run_options: accepted and ignored, as onnxruntime's call sites pass it.
        profile: time every node and measure peak activation memory (`last_profile`,
        `peak_activation_bytes`). A kernel that fails raises KernelFailed naming the node."""
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
            return as_outputs(outputs)
        names = [o.name for o in self._outputs]
        index = {n: i for i, n in enumerate(names)}
        missing = [n for n in output_names if n not in index]
        if missing:
            raise UsageError(f"unknown output name(s) {missing}; the model's outputs are {names}")
        return [as_output(outputs[index[n]]) for n in output_names]

    def _build_fast_run(self):
        """fn(feed) -> outputs, or None when the feed is not the common case (runtime/fast_run.py).
        Built at the first run; False when an input's type cannot be checked that way (sequences,
        optionals, ...)."""
        specs = [(a.name, feed_spec(a)) for a in self._inputs]
        if not all(spec for _, spec in specs):
            self._fast_run = False
            return False
        self._fast_run = build_fast_run(specs, self._plan._input_defaults, self._plan, self._limit, as_outputs)
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
                spec = specs[name] = feed_spec(arg)
            if not fits_spec(spec, value):
                value = check_value(known.get(name) or overridable[name], value)  # converts, or says what is wrong
            checked[name] = value
        return checked


# __new__ takes (*args, **kwargs) to pick the device's class: show __init__'s signature instead
Session.__signature__ = inspect.signature(Session.__init__).replace(
    parameters=list(inspect.signature(Session.__init__).parameters.values())[1:])


def _import_kernels(device: str):
    import graphopt.kernels.cpu  # noqa: F401  (registers the CPU kernels)
    if device != "cpu":
        try:
            import graphopt.kernels.gpu  # noqa: F401
        except ImportError:
            pass
