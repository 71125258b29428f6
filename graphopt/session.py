"""Session: run an ONNX model with graphopt's NumPy kernels, shaped like onnxruntime.InferenceSession.

Everything that does not depend on the feed is done once, at build: the topological plan, constants
turned into arrays, attributes resolved with schema defaults, each node bound to its kernel, and
the liveness of every value (a value is dropped right after its last use). `run` is then a loop
over (kernel, input slots, output slots, attributes) tuples.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .errors import GraphoptError, InvalidModel, Unsupported, UsageError

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


def _node_arg(vi: onnx.ValueInfoProto) -> NodeArg:
    shape = None
    tt = vi.type.tensor_type if vi.type.HasField("tensor_type") else None
    if tt is not None and tt.HasField("shape"):
        shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim]
    return NodeArg(vi.name, shape, type_string(vi.type), vi.type)


def _opset_map(imports) -> dict[str, int]:
    from graphopt.kernels.registry import norm_domain
    return {norm_domain(o.domain): o.version for o in imports}


class Session:
    """`Session(model_or_path, device="cpu", threads=None)`; `.run(output_names, feed)`.

    `threads` caps the BLAS thread pool during run (through threadpoolctl when it is installed);
    `providers`/`sess_options` are accepted and ignored so ORT call sites work unchanged."""

    def __init__(self, model_or_path, device: str = "cpu", threads: int | None = None, *,
                 providers=None, sess_options=None):
        model = load_model(model_or_path)
        if device not in ("cpu", "gpu"):
            raise UsageError(f"device must be 'cpu' or 'gpu', got {device!r}")
        self.device = device
        self.threads = threads
        self._limit = _thread_limiter(threads)
        self._model = model
        _import_kernels(device)
        functions = {(f.domain, f.name): f for f in model.functions}
        ctx = BuildContext(device=device, functions=functions)
        try:
            self._plan = Plan.from_graph(model.graph, _opset_map(model.opset_import), ctx, nested=False)
        except (KeyError, ValueError, TypeError) as e:
            raise InvalidModel(f"cannot build a plan for the model: {e}") from e
        if ctx.unsupported:
            listed = ", ".join(f"{d or 'ai.onnx'}::{op} (opset {v})" for d, op, v in sorted(ctx.unsupported))
            raise Unsupported(f"graphopt runtime ({device}) has no kernel for: {listed}")
        inits = {t.name for t in model.graph.initializer} | {
            s.values.name for s in model.graph.sparse_initializer}
        self._inputs = [_node_arg(vi) for vi in model.graph.input if vi.name not in inits]
        self._overridable = [_node_arg(vi) for vi in model.graph.input if vi.name in inits]
        self._outputs = [_node_arg(vi) for vi in model.graph.output]

    # --- the onnxruntime.InferenceSession surface -------------------------------------------
    def get_inputs(self) -> list[NodeArg]:
        return list(self._inputs)

    def get_outputs(self) -> list[NodeArg]:
        return list(self._outputs)

    def get_overridable_initializers(self) -> list[NodeArg]:
        return list(self._overridable)

    def run(self, output_names, input_feed: dict, run_options=None) -> list:
        if not isinstance(input_feed, dict):
            raise UsageError(f"feed must be a dict of input name -> array, got {type(input_feed).__name__}")
        feeds = self._check_feed(input_feed)
        if self._limit is not None:
            with self._limit():
                outputs = self._plan.run_named(feeds, None)
        else:
            outputs = self._plan.run_named(feeds, None)
        names = [o.name for o in self._outputs]
        if output_names is None:
            result = outputs
        else:
            index = {n: i for i, n in enumerate(names)}
            missing = [n for n in output_names if n not in index]
            if missing:
                raise UsageError(f"unknown output name(s) {missing}; the model's outputs are {names}")
            result = [outputs[index[n]] for n in output_names]
        return [_as_output(r) for r in result]

    def _check_feed(self, feed: dict) -> dict:
        known = {a.name: a for a in self._inputs}
        overridable = {a.name: a for a in self._overridable}
        extra = [k for k in feed if k not in known and k not in overridable]
        if extra:
            raise UsageError(f"feed has unknown input(s) {extra}; the model's inputs are {list(known)}")
        missing = [k for k in known if k not in feed]
        if missing:
            raise UsageError(f"missing input(s) {missing}; the model's inputs are {list(known)}")
        checked = {}
        for name, value in feed.items():
            arg = known.get(name) or overridable[name]
            checked[name] = _check_value(arg, value)
        return checked


def _thread_limiter(threads):
    if not threads:
        return None
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return None
    return lambda: threadpool_limits(limits=threads)


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
    if isinstance(model_or_path, onnx.ModelProto):
        return model_or_path
    if isinstance(model_or_path, (bytes, bytearray)):
        try:
            return onnx.load_from_string(bytes(model_or_path))
        except Exception as e:  # protobuf raises its own DecodeError
            raise InvalidModel(f"bytes are not an ONNX model: {e}") from e
    path = os.fspath(model_or_path)
    if not os.path.exists(path):
        raise UsageError(f"model file not found: {path}")
    try:
        # external data is resolved relative to the model's folder
        return onnx.load(path, load_external_data=True)
    except Exception as e:
        raise InvalidModel(f"cannot load ONNX model {path}: {e}") from e


def _import_kernels(device: str):
    import graphopt.kernels.cpu  # noqa: F401  (registers the CPU kernels)
    if device != "cpu":
        try:
            import graphopt.kernels.gpu  # noqa: F401
        except ImportError:
            pass


# --- the plan -------------------------------------------------------------------------------------
@dataclass
class BuildContext:
    device: str
    functions: dict  # (domain, name) -> FunctionProto, the model's local functions
    unsupported: set = field(default_factory=set)


class Plan:
    """A graph compiled to steps over numbered slots; subgraphs (If/Loop/Scan bodies, function
    bodies) are Plans too, reading the values they borrow from enclosing scopes via `outer`."""

    def __init__(self, nodes, input_names, output_names, constants: dict, opsets: dict,
                 ctx: BuildContext, nested: bool, function: bool = False):
        from graphopt.kernels import registry
        self.input_names = list(input_names)
        self.output_names = list(output_names)
        self.output_args = []
        slots: dict[str, int] = {}
        template: list = []

        def slot(name):
            if name not in slots:
                slots[name] = len(template)
                template.append(None)
            return slots[name]

        none_slot, trash_slot = slot("\0none"), slot("\0trash")
        defined = set()
        for name in self.input_names:
            slot(name)
            defined.add(name)
        for name, value in constants.items():
            template[slot(name)] = value
            defined.add(name)

        def convert_graph(g):
            return Plan.from_graph(g, opsets, ctx, nested=True)

        built = []  # (node, attrs, implicit names, fn)
        for node in nodes:
            domain = registry.norm_domain(node.domain)
            opset = opsets.get(domain, 1 if domain else 21)
            attrs = registry.resolve_attributes(node, opset, convert_graph)
            attrs["__n_outputs__"] = len(node.output)
            implicit = sorted({n for v in attrs.values() for p in (v if isinstance(v, list) else [v])
                               if isinstance(p, Plan) for n in p.free_names})
            if domain == "" and node.op_type == "Constant" and not implicit:
                value = _constant_value(attrs)
                constants[node.output[0]] = value
                template[slot(node.output[0])] = value
                defined.add(node.output[0])
                continue
            fn = _bind(node, domain, opset, attrs, opsets, ctx)
            if fn is None:
                ctx.unsupported.add((domain, node.op_type, opset))
            explicit = _formal_inputs(node, domain, opset)
            if implicit:
                fn = _with_outer(fn, len(explicit), implicit)
            built.append((node, attrs, implicit, fn, explicit))

        built = _toposort(built, defined)
        produced = {o for n, *_ in built for o in n.output if o}
        uses = [explicit + imp for _, _, imp, _, explicit in built]
        self.free_names = sorted({u for us in uses for u in us if u and u not in defined and u not in produced}
                                 | {o for o in self.output_names if o not in defined and o not in produced})
        if function:  # a function body may leave optional outputs undefined: they come out as None
            for o in self.output_names:
                if o not in defined and o not in produced:
                    slots[o] = none_slot
            self.free_names = [n for n in self.free_names if n not in self.output_names]
        if self.free_names and not nested:
            raise InvalidModel(f"the graph uses value(s) that nothing defines: {self.free_names}")
        self.outer_slots = [(name, slot(name)) for name in self.free_names]

        keep = set(self.output_names)
        last_use = {}
        for i, us in enumerate(uses):
            for u in us:
                if u:
                    last_use[u] = i
        self.steps = []
        for i, ((node, attrs, _, fn, _), us) in enumerate(zip(built, uses)):
            ins = [slot(u) if u else none_slot for u in us]
            outs = [slot(o) if o else trash_slot for o in node.output]
            dead = [o for o in node.output if o and o not in keep and o not in last_use]
            frees = [slot(u) for u in dict.fromkeys(us) if u and last_use.get(u) == i and u not in keep]
            frees += [slot(o) for o in dead]
            desc = f"node {node.name or '#' + str(i)} ({node.op_type})"
            self.steps.append((fn, ins, outs, attrs, frees, desc))
        self.template = template
        self.slots = slots
        self.input_slots = [slots[n] for n in self.input_names]
        self.output_slots = [slot(n) for n in self.output_names]

    @classmethod
    def from_graph(cls, graph: onnx.GraphProto, opsets: dict, ctx: BuildContext, nested: bool = False):
        from graphopt.kernels.registry import sparse_to_dense
        constants = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
        for sp in graph.sparse_initializer:
            constants[sp.values.name] = sparse_to_dense(sp)
        plan = cls(graph.node, [i.name for i in graph.input], [o.name for o in graph.output],
                   constants, opsets, ctx, nested)
        plan.output_args = [_node_arg(o) for o in graph.output]  # lets Loop/Scan shape empty scan outputs
        return plan

    def run(self, inputs: list, outer: dict | None = None) -> list:
        """Run with positional inputs (missing trailing ones are None); `outer` feeds free names."""
        env = self.template.copy()
        for s, v in zip(self.input_slots, inputs):
            env[s] = v
        return self._loop(env, outer)

    def run_named(self, feeds: dict, outer: dict | None) -> list:
        env = self.template.copy()
        slots = self.slots
        for name, v in feeds.items():
            env[slots[name]] = v
        return self._loop(env, outer)

    def _loop(self, env, outer):
        for name, s in self.outer_slots:
            env[s] = outer[name]
        step = None
        try:
            for step in self.steps:
                fn, ins, outs, attrs, frees, _ = step
                res = fn([env[i] for i in ins], attrs)
                for s, v in zip(outs, res):
                    env[s] = v
                for s in frees:
                    env[s] = None
        except GraphoptError:
            raise
        except Exception as e:
            raise RuntimeError(f"{step[5] if step else 'plan'}: {type(e).__name__}: {e}") from e
        return [env[s] for s in self.output_slots]


def _constant_value(attrs: dict):
    from graphopt.kernels.cpu.shape import constant
    try:
        return constant([], attrs)[0]
    except ValueError:
        raise InvalidModel("Constant node without a value attribute") from None


def _formal_inputs(node, domain, opset) -> list[str]:
    """The node's inputs padded with "" (absent: the kernel sees None) up to the schema's count."""
    from graphopt.kernels.registry import get_schema
    names = list(node.input)
    schema = get_schema(domain, node.op_type, opset)
    if schema is not None and schema.inputs and all(
            f.option != onnx.defs.OpSchema.FormalParameterOption.Variadic for f in schema.inputs):
        names += [""] * (len(schema.inputs) - len(names))
    return names


def _with_outer(fn, n_explicit: int, names: list):
    """Kernels of If/Loop/Scan get the outer values their subgraphs read as attrs['__outer__']."""
    if fn is None:
        return None

    def call(inputs, attrs):
        outer = dict(zip(names, inputs[n_explicit:]))
        return fn(inputs[:n_explicit], {**attrs, "__outer__": outer})
    return call


def _bind(node, domain, opset, attrs, opsets, ctx):
    """The callable that runs `node`: a model-local function, a kernel, or the schema's function body."""
    from graphopt.kernels import registry
    local = ctx.functions.get((node.domain, node.op_type))
    if local is not None:
        return _local_function(local, node, opsets, ctx)
    fn = registry.lookup(domain, node.op_type, opset, ctx.device)
    if fn is not None:
        return fn
    schema = registry.get_schema(domain, node.op_type, opset)
    if schema is not None and (schema.has_function or schema.has_context_dependent_function):
        return _SchemaFunction(schema, node, opset, opsets, ctx)
    return None


def _local_function(fproto, node, opsets, ctx):
    from graphopt.kernels.registry import instantiate_function
    body_opsets = {**opsets, **_opset_map(fproto.opset_import)}
    nodes = instantiate_function(fproto, node)
    plan = Plan(nodes, list(fproto.input), list(fproto.output), {}, body_opsets, ctx, nested=False, function=True)
    return lambda inputs, attrs: plan.run(inputs)


class _SchemaFunction:
    """An op without a kernel whose schema defines it as a function of other ops: run that body.
    Context-dependent bodies depend on input types, so they are built per input signature."""

    def __init__(self, schema, node, opset, opsets, ctx):
        from graphopt.kernels.registry import fill_default_attributes
        self.schema, self.opset, self.opsets, self.ctx = schema, opset, opsets, ctx
        self.node = fill_default_attributes(node, schema)
        self.plans = {}
        if schema.has_function:
            self.plans[None] = self._build(self._function_proto(None))

    def _function_proto(self, types):
        s = self.schema
        if types is None:
            versions = [v for v in s.function_opset_versions if v <= self.opset] or [s.since_version]
            data = s.get_function_with_opset_version(max(versions))
        else:
            versions = [v for v in s.context_dependent_function_opset_versions if v <= self.opset]
            ver = max(versions) if versions else s.since_version
            data = s.get_context_dependent_function_with_opset_version(
                ver, self.node.SerializeToString(), [t.SerializeToString() for t in types])
        f = onnx.FunctionProto()
        f.ParseFromString(data)
        return f

    def _build(self, fproto):
        from graphopt.kernels.registry import instantiate_function
        nodes = instantiate_function(fproto, self.node)
        body_opsets = {**self.opsets, **_opset_map(fproto.opset_import)}
        return Plan(nodes, list(fproto.input), list(fproto.output), {}, body_opsets, self.ctx, nested=False, function=True)

    def __call__(self, inputs, attrs):
        plan = self.plans.get(None)
        if plan is None:
            key = tuple((None if x is None else (np.asarray(x).dtype.str, np.ndim(x))) for x in inputs)
            plan = self.plans.get(key)
            if plan is None:
                types = [onnx.TypeProto() if x is None else helper.make_tensor_type_proto(
                    _np_elem(np.asarray(x).dtype), np.shape(x)) for x in inputs]
                plan = self.plans[key] = self._build(self._function_proto(types))
                if self.ctx.unsupported:
                    raise Unsupported(f"function body of {self.node.op_type} uses ops without kernels: "
                                      f"{sorted(self.ctx.unsupported)}")
        return plan.run(inputs)


def _toposort(built, defined: set):
    """Nodes in dependency order (graphs are usually sorted already: then this is one pass)."""
    available = set(defined)
    produced_by = {}
    for idx, (node, *_) in enumerate(built):
        for o in node.output:
            if o:
                produced_by[o] = idx
    order, done = [], [False] * len(built)
    remaining = list(range(len(built)))
    while remaining:
        progress, later = False, []
        for idx in remaining:
            node, _, implicit, *_ = built[idx]
            deps = [u for u in list(node.input) + implicit if u and u in produced_by and u not in available]
            if deps:
                later.append(idx)
                continue
            order.append(built[idx])
            done[idx] = progress = True
            available.update(o for o in node.output if o)
        if not progress:
            names = [built[i][0].name or built[i][0].op_type for i in later[:5]]
            raise InvalidModel(f"the graph has a cycle through node(s) {names}")
        remaining = later
    return order
