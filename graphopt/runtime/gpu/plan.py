"""The GPU plan: which values live on the host, which on the device, and the steps of a run.

Built once per session:
- host values: constants, Shape/Size results (read from array metadata, no device sync) and
  everything computed only from those (shape arithmetic) with the CPU kernels. These depend only
  on the feed's shapes, so their results (and the device copies of those used as data) are cached
  per input-shape signature: a second run with the same shapes skips them entirely. Graphs with a
  data-dependent shape (NonZero, Unique, control flow, CPU fallbacks) disable the cache.
- device steps: one GPU kernel per node, with constants uploaded once at build; chains of
  elementwise float ops become one generated kernel (kernels/gpu/codegen.py).
- ops without a GPU kernel: an error naming them, or (gpu_fallback=True) the CPU kernel with
  copies both ways, which is slow and says so in `fallback_ops`.
"""
from __future__ import annotations

import numpy as np
import onnx

from graphopt.errors import InvalidModel, Unsupported
from graphopt.ir.attributes import norm_domain, resolve_attributes, sparse_to_dense
from graphopt.ir.op_traits import CONTROL_FLOW_OPS, HOST_INPUTS, RANDOM_OPS, SHAPE_READERS
from graphopt.runtime.plan import (BuildContext, Plan, bind_node, constant_value, formal_inputs, opset_map,
                                   toposort_nodes)

# ops whose results are not a function of the input shapes alone: no per-shape cache with them
UNCACHEABLE_OPS = {"NonZero", "Unique", "Compress", "NonMaxSuppression", "StringSplit"} | CONTROL_FLOW_OPS | RANDOM_OPS
_FLOATS = {np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64)}


class Step:
    __slots__ = ("fn", "ins", "outs", "attrs", "frees", "desc", "cached")

    def __init__(self, fn, ins, outs, attrs, desc, cached=False):
        self.fn, self.ins, self.outs, self.attrs, self.desc, self.cached = fn, ins, outs, attrs, desc, cached
        self.frees: list[int] = []


def _value_types(model) -> dict[str, np.dtype]:
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception:  # inference is an optimization hint here, never required
        inferred = model
    g = inferred.graph
    out = {t.name: np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.data_type)) for t in g.initializer
           if t.data_type and t.data_type != onnx.TensorProto.STRING}
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        tt = vi.type.tensor_type
        if vi.type.HasField("tensor_type") and tt.elem_type:
            try:
                out[vi.name] = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type))
            except (KeyError, TypeError):
                pass
    return out


class GpuPlan:
    def __init__(self, model: onnx.ModelProto, fallback: bool = False, fuse: bool = True):
        import cupy as cp

        import graphopt.kernels.cpu  # noqa: F401  (host steps and fallbacks)
        import graphopt.kernels.gpu.ops  # noqa: F401  (registers the GPU kernels)
        from graphopt.kernels import registry

        self.cp = cp
        opsets = opset_map(model.opset_import)
        graph = model.graph
        functions = {(f.domain, f.name): f for f in model.functions}
        cpu_ctx = BuildContext(device="cpu", functions=functions)
        types = _value_types(model) if fuse else {}
        self.slots: dict[str, int] = {}
        self.template: list = []
        self.fallback_ops: list[str] = []
        unsupported: set = set()
        host: set[str] = set()
        constants = {t.name: onnx.numpy_helper.to_array(t) for t in graph.initializer}
        constants.update({sp.values.name: sparse_to_dense(sp) for sp in graph.sparse_initializer})
        for name, value in constants.items():
            self.template.append(value)
            self.slots[name] = len(self.template) - 1
            host.add(name)
        self.input_names = [i.name for i in graph.input if i.name not in constants]
        for name in self.input_names:
            self._slot(name)

        built = []
        for node in graph.node:
            domain = norm_domain(node.domain)
            opset = opsets.get(domain, 1 if domain else 21)
            attrs = resolve_attributes(
                node, opset, lambda g: Plan.from_graph(g, opsets, cpu_ctx, nested=True))
            attrs["__n_outputs__"] = len(node.output)
            implicit = sorted({n for v in attrs.values() for p in (v if isinstance(v, list) else [v])
                               if isinstance(p, Plan) for n in p.free_names})
            built.append((node, attrs, implicit, None, list(node.input)))
        built = toposort_nodes(built, set(constants) | set(self.input_names))
        self.cacheable = not any(n.op_type in UNCACHEABLE_OPS or imp for n, _, imp, _, _ in built)

        uses: dict[str, int] = {}
        for node, *_ in built:
            for name in node.input:
                if name:
                    uses[name] = uses.get(name, 0) + 1
        graph_outputs = {o.name for o in graph.output}
        self.steps: list[Step] = []
        pending = []  # elementwise nodes waiting to be fused: (node, attrs, opset)
        self._uploads_at_build = {}

        def flush():
            if pending:
                self._emit_fused(pending, types, host)
                pending.clear()

        for node, attrs, implicit, _, _ in built:
            domain = norm_domain(node.domain)
            opset = opsets.get(domain, 1 if domain else 21)
            desc = f"node {node.name or node.output[0]} ({node.op_type})"
            if domain == "" and node.op_type == "Constant" and not implicit:
                value = constant_value(attrs)
                self.template[self._slot(node.output[0])] = value
                host.add(node.output[0])
                continue
            ins = formal_inputs(node, domain, opset)  # absent optional inputs: "" (the kernel sees None)
            all_host = all(not n or n in host for n in ins) and not implicit
            if (node.op_type in SHAPE_READERS or all_host) and domain == "":
                fn = bind_node(node, domain, opset, attrs, opsets, cpu_ctx)
                if fn is not None:
                    host.update(o for o in node.output if o)
                    if self._fold(fn, node, ins, attrs):
                        continue
                    flush()
                    if node.op_type in SHAPE_READERS:
                        fn = _shape_of(fn)
                    self._add_step(fn, ins, node.output, attrs, desc, cached=True)
                    continue
            if fuse and self._fusable(node, attrs, types, host, uses, graph_outputs, pending):
                pending.append((node, attrs, opset))
                continue
            flush()
            fn = registry.lookup(domain, node.op_type, opset, "gpu") if not implicit else None
            if fn is None:
                if not fallback:
                    unsupported.add((domain, node.op_type, opset))
                    continue
                cpu_fn = bind_node(node, domain, opset, attrs, opsets, cpu_ctx)
                if cpu_fn is None:
                    unsupported.add((domain, node.op_type, opset))
                    continue
                self.cacheable = False
                self.fallback_ops.append(desc)
                fn = _on_host(cpu_fn, len(ins), implicit)
                self._add_step(fn, ins + implicit, node.output, attrs, desc)
                continue
            params = HOST_INPUTS.get(node.op_type, frozenset())
            if any(n and n not in host for i, n in enumerate(ins) if i in params):
                self.cacheable = False  # shapes downstream depend on device data
            dev_ins = [n if (not n or n not in host or i in params) else self._device_copy(n)
                       for i, n in enumerate(ins)]
            self._add_step(fn, dev_ins, node.output, attrs, desc)
        flush()
        if unsupported:
            listed = ", ".join(f"{d or 'ai.onnx'}::{op} (opset {v})" for d, op, v in sorted(unsupported))
            raise Unsupported(f"graphopt GPU runtime has no kernel for: {listed} "
                              "(Session(..., gpu_fallback=True) runs them on the CPU)")
        self.output_names = [o.name for o in graph.output]
        missing = [o for o in self.output_names if o not in self.slots]
        if missing:
            raise InvalidModel(f"the graph's output(s) {missing} are never computed")
        self.output_slots = [self.slots[o] for o in self.output_names]
        self.input_slots = {n: self.slots[n] for n in self.input_names}
        self._liveness(set(self.output_slots))
        # constants used as device data: uploaded once, now
        for name, slot in self._uploads_at_build.items():
            self.template[slot] = cp.asarray(self.template[self.slots[name]])
        self.host_cache: dict = {}

    # --- building --------------------------------------------------------------------------
    def _slot(self, name: str) -> int:
        if name not in self.slots:
            self.slots[name] = len(self.template)
            self.template.append(None)
        return self.slots[name]

    def _add_step(self, fn, ins, outs, attrs, desc, cached=False):
        self.steps.append(Step(fn, [self._slot(n) if n else -1 for n in ins],
                               [self._slot(o) if o else -2 for o in outs], attrs, desc, cached))

    def _fold(self, fn, node, ins, attrs) -> bool:
        """A node of constants only (weight transposes, dequantized weights) runs once, now: its
        outputs become constants (uploaded at build when the device reads them)."""
        if node.op_type in UNCACHEABLE_OPS or node.op_type in SHAPE_READERS:
            return False
        values = [self.template[self.slots[n]] if n else None for n in ins]
        if any(n and v is None for n, v in zip(ins, values)):
            return False  # computed per run (from shapes): a cached step instead
        outs = fn(values, attrs)
        for o, v in zip(node.output, outs):
            if o:
                self.template[self._slot(o)] = v
        return True

    def _device_copy(self, name: str) -> str:
        """The name of a device copy of host value `name`: uploaded at build for constants, else by
        an upload step that is cached per input shapes like the host step that made the value."""
        dev = "\0dev:" + name
        if dev in self.slots:
            return dev
        producer_is_step = self.template[self.slots[name]] is None
        self._slot(dev)
        if producer_is_step:
            self._add_step(lambda ins, at: (self.cp.asarray(ins[0]),), [name], [dev], {}, f"upload {name}",
                           cached=True)
        else:
            self._uploads_at_build[name] = self.slots[dev]
        return dev

    def _fusable(self, node, attrs, types, host, uses, graph_outputs, pending) -> bool:
        from graphopt.kernels.gpu import codegen
        if node.domain not in ("", "ai.onnx") or codegen.lower(node.op_type, len(node.input), attrs) is None:
            return False
        names = [n for n in node.input] + list(node.output)
        if len(node.output) != 1 or any(not n for n in names):
            return False
        dts = {types.get(n) for n in names}
        if len(dts) != 1 or next(iter(dts)) not in _FLOATS:
            return False
        if any(n in host and self.template[self.slots[n]] is None for n in node.input):
            return False  # a computed host value: leave it to the plain kernels
        if pending:  # extend the chain only through its last value, and only when nothing else reads it
            last = pending[-1][0].output[0]
            ok = list(node.input).count(last) == uses.get(last, 0) and last not in graph_outputs and \
                not any(n in {p.output[0] for p, _, _ in pending[:-1]} for n in node.input)
            if not ok:
                self._emit_fused(pending, types, host)
                pending.clear()
        return True

    def _emit_fused(self, pending, types, host):
        from graphopt.kernels.gpu import codegen
        if len(pending) == 1:  # nothing to fuse: the op's own kernel
            node, attrs, opset = pending[0]
            from graphopt.kernels import registry
            fn = registry.lookup("", node.op_type, opset, "gpu")
            if fn is not None:
                ins = [self._device_copy(n) if n in host else n for n in node.input]
                self._add_step(fn, ins, node.output, attrs, f"node {node.name or node.output[0]} ({node.op_type})")
                return
        b = codegen.ProgramBuilder()
        for node, attrs, _ in pending:
            if not b.add(node.op_type, list(node.input), attrs, node.output[0]):
                raise AssertionError(f"fusable node {node.name} did not lower")  # _fusable checked it
        out = pending[-1][0].output[0]
        program = b.build([out])
        dtype = types[out]
        ins = [self._device_copy(n) if n in host else n for n in b.input_names]
        ops = "+".join(n.op_type for n, _, _ in pending)
        self._add_step(_FusedStep(program, dtype), ins, [out], {}, f"fused {ops} -> {out}")

    def _liveness(self, keep: set):
        last = {}
        for i, st in enumerate(self.steps):
            for s in st.ins:
                if s >= 0:
                    last[s] = i
        for i, st in enumerate(self.steps):
            st.frees = [s for s in dict.fromkeys(st.ins) if s >= 0 and last.get(s) == i and s not in keep
                        and self.template[s] is None]

    # --- running ---------------------------------------------------------------------------
    def shape_key(self, feeds: dict):
        return tuple((n, tuple(v.shape), str(v.dtype)) for n, v in sorted(feeds.items()))

    def run(self, feeds: dict, keep_all: bool = False) -> list:
        env = self.template.copy()
        env.append(None)  # slot -1: an absent optional input
        for name, v in feeds.items():
            env[self.slots[name]] = v
        key = self.shape_key(feeds) if self.cacheable else None
        cached = self.host_cache.get(key) if key is not None else None
        record = [] if key is not None and cached is None else None
        if cached is not None:
            for s, v in cached:
                env[s] = v
        step = None
        try:
            for step in self.steps:
                if step.cached and cached is not None:
                    continue
                res = step.fn([env[i] for i in step.ins], step.attrs)
                for s, v in zip(step.outs, res):
                    if s >= 0:
                        env[s] = v
                        if record is not None and step.cached:
                            record.append((s, v))
                if not keep_all:
                    for s in step.frees:
                        env[s] = None
        except (Unsupported, InvalidModel):
            raise
        except Exception as e:
            raise RuntimeError(f"{step.desc if step else 'plan'}: {type(e).__name__}: {e}") from e
        if record is not None:
            self.host_cache[key] = record
        return [env[s] for s in self.output_slots]


class _FusedStep:
    """One generated kernel for a chain; specialized (and compiled) once per input-shape pattern."""

    def __init__(self, program, dtype):
        self.program, self.dtype = program, np.dtype(dtype)
        self.by_shapes: dict = {}

    def __call__(self, ins, attrs):
        import cupy as cp

        from graphopt.kernels.gpu import cupy_runtime as rt
        from graphopt.kernels.gpu import codegen
        arrs = [rt.c_contig(rt.device(x).astype(self.dtype, copy=False)) for x in ins]
        shapes = tuple(a.shape for a in arrs)
        hit = self.by_shapes.get(shapes)
        if hit is None:
            chain, out_shape, size_args = codegen.specialize(self.program, list(shapes), self.dtype.name)
            hit = self.by_shapes[shapes] = (rt.fused_function(chain), out_shape,
                                            tuple(np.int64(v) for v in size_args))
        fn, out_shape, size_args = hit
        y = cp.empty(out_shape, dtype=self.dtype)
        rt.launch(fn, y.size, (*arrs, y, *size_args))
        return (y,)


def _shape_of(fn):
    """Shape/Size read only metadata: give the CPU kernel a zero-stride stand-in, never the data."""
    def run(ins, attrs):
        x = ins[0]
        return fn([np.broadcast_to(np.zeros((), np.int8), x.shape)], attrs)
    return run


def _on_host(cpu_fn, n_explicit, implicit):
    def run(ins, attrs):
        import cupy as cp
        host = [cp.asnumpy(x) if isinstance(x, cp.ndarray) else x for x in ins]
        if implicit:
            res = cpu_fn(host[:n_explicit], {**attrs, "__outer__": dict(zip(implicit, host[n_explicit:]))})
        else:
            res = cpu_fn(host, attrs)
        return [cp.asarray(r) if isinstance(r, np.ndarray) else r for r in res]
    return run
