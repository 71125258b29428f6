"""The execution plan: a graph compiled once into steps over numbered slots.

At build: nodes in topological order, attributes resolved with schema defaults, each node bound to
its kernel; nodes whose inputs are all constants are run once (ConstantOfShape weights, shape
arithmetic) and become constants; a kernel with a `prepare` hook gets its constant inputs
up front and returns a specialized callable (conv weights laid out for GEMM, BatchNorm reduced to
scale/shift, ...). Every value is dropped right after its last use, before the consuming kernel
runs, so a kernel that holds the only reference to a dying input may write its result into it
(kernels/cpu/_inplace.py decides that from the reference count). The steps, (kernel, input slots,
output slots, attributes, slots to free) tuples, are then compiled into one straight-line Python
function (codegen.py), specialized per input-shape signature where shape arithmetic can
fold (specialize.py); calls of the model's local functions are inlined (inline.py).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from graphopt.errors import GraphoptError, InvalidModel, KernelFailed
from graphopt.ir.attributes import get_schema, norm_domain, resolve_attributes, sparse_to_dense
from graphopt.ir.op_traits import MAY_DRAW_RANDOM
from graphopt.kernels import registry
from graphopt.runtime.io_spec import node_arg
from graphopt.runtime.plan.codegen import compile_plan
from graphopt.runtime.plan.functions import LocalFunctionCall, SchemaFunctionCall
from graphopt.runtime.plan.inline import inline_functions
from graphopt.runtime.plan.profile import Profile, run_profiled
from graphopt.runtime.plan.specialize import SpecializeBudget, fixed_steps, signature, specialize

# A folded constant larger than this stays a runtime computation (it would otherwise be held in
# memory for the whole life of the session).
FOLD_LIMIT_BYTES = 1 << 30

@dataclass
class BuildContext:
    device: str
    functions: dict  # (domain, name) -> FunctionProto, the model's local functions
    unsupported: set = field(default_factory=set)
    fold_limit: int = FOLD_LIMIT_BYTES


class Plan:
    """A graph compiled to steps over numbered slots; subgraphs (If/Loop/Scan bodies, function
    bodies) are Plans too, reading the values they borrow from enclosing scopes via `outer`.
    A step is (fn, input slots, output slots, attrs, slots freed before fn runs, description)."""

    def __init__(self, nodes, input_names, output_names, constants: dict, opsets: dict,
                 ctx: BuildContext, nested: bool, function: bool = False):
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
        constants = dict(constants)
        for name, value in constants.items():
            template[slot(name)] = value
            defined.add(name)

        def convert_graph(g):  # a subgraph sees this scope's constants as its own (folded, prepared),
            # except initializers a feed may override (they are graph inputs too)
            fixed = {n: v for n, v in constants.items() if n not in self.input_names}
            return Plan.from_graph(g, opsets, ctx, nested=True, outer_constants=fixed)

        built = []  # (node, attrs, implicit names, fn, explicit input names, domain, opset)
        for node in inline_functions(nodes, ctx.functions, opsets):
            domain = norm_domain(node.domain)
            opset = opsets.get(domain, 1 if domain else 21)
            attrs = resolve_attributes(node, opset, convert_graph)
            attrs["__n_outputs__"] = len(node.output)
            implicit = sorted({n for v in attrs.values() for p in (v if isinstance(v, list) else [v])
                               if isinstance(p, Plan) for n in p.free_names})
            if domain == "" and node.op_type == "Constant" and not implicit:
                value = constant_value(attrs)
                constants[node.output[0]] = value
                template[slot(node.output[0])] = value
                defined.add(node.output[0])
                continue
            fn = bind_node(node, domain, opset, attrs, opsets, ctx)
            refused = getattr(fn, "refuse", None)  # a kernel that runs some forms of its op only
            why = refused(attrs, [bool(i) for i in node.input], [bool(o) for o in node.output]) if refused else None
            if fn is None or why:
                ctx.unsupported.add((domain, f"{node.op_type} ({why})" if why else node.op_type, opset))
            explicit = formal_inputs(node, domain, opset)
            if implicit:
                fn = _with_outer(fn, len(explicit), implicit)
            built.append((node, attrs, implicit, fn, explicit, domain, opset))

        built = toposort_nodes(built, defined)
        keep = set(self.output_names)
        self.folded = 0  # nodes run once at build
        if not ctx.unsupported:
            built = self._fold(built, constants, keep, ctx, lambda n, v: template.__setitem__(slot(n), v))
            defined |= set(constants)
            generic, built = built, [_prepared(b, constants, ctx) for b in built]
            self._generic = generic  # per step, before prepare: see reprepare()
        produced = {o for b in built for o in b[0].output if o}
        uses = [b[4] + b[2] for b in built]
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

        last_use = {}
        for i, us in enumerate(uses):
            for u in us:
                if u:
                    last_use[u] = i
        self.steps = []
        self.ops = []  # (domain, op_type) per step, for profiles
        self.opaque = []  # per step: runs a nested plan (subgraph, function body) that may hold random ops
        for i, (b, us) in enumerate(zip(built, uses)):
            node, attrs, fn = b[0], b[1], b[3]
            ins = [slot(u) if u else none_slot for u in us]
            # an output nobody reads goes to the trash slot, overwritten by the next one
            outs = [slot(o) if o and (o in keep or o in last_use) else trash_slot for o in node.output]
            frees = [slot(u) for u in dict.fromkeys(us) if u and last_use.get(u) == i and u not in keep]
            desc = f"node {node.name or '#' + str(i)} ({node.op_type})"
            self.steps.append((fn, ins, outs, attrs, frees, desc))
            self.ops.append((b[5], node.op_type))
            self.opaque.append(runs_nested_plans(fn, attrs))
        self.template = template
        self.slots = slots
        self.constant_slots = {slots[n] for n in constants if n in slots}
        self.input_slots = [slots[n] for n in self.input_names]
        self.output_slots = [slot(n) for n in self.output_names]
        self._input_set = set(self.input_names)
        self._input_defaults = [(n, template[s]) for n, s in zip(self.input_names, self.input_slots)]
        self._compiled = compile_plan(self, KernelFailed)
        self._ctx, self._constants = ctx, constants
        # an If branch (a nested plan without inputs) is specialized on the shapes of the outer
        # values it reads: exporters test shapes there (Shape -> Gather -> Equal -> If). Loop and
        # Scan bodies are not: their carried values may change shape at every iteration.
        self._fixed = [] if (nested and self.input_slots) or ctx.unsupported else fixed_steps(self)
        self._specialized = {}  # input signature -> compiled function (specialize.py)
        self._budget = SpecializeBudget()  # when a signature earns its specialization

    def _fold(self, built, constants, keep, ctx, store):
        """Run, once, every node whose inputs are all constants; its outputs become constants."""
        rest = []
        for b in built:
            node, attrs, implicit, fn, explicit = b[:5]
            if (fn is None or implicit or node.op_type in MAY_DRAW_RANDOM or isinstance(fn, LocalFunctionCall)
                    or runs_nested_plans(fn, attrs)  # a subgraph may hold random ops
                    or any(o in keep for o in node.output) or not all(u in constants for u in explicit if u)):
                rest.append(b)
                continue
            try:
                res = fn([constants[u] if u else None for u in explicit], attrs)
            except Exception:  # noqa: BLE001  (a failing kernel fails at run time, naming the node)
                rest.append(b)
                continue
            if not all(isinstance(r, np.ndarray) for r in res) or len(res) < sum(1 for o in node.output if o) \
                    or sum(r.nbytes for r in res) > ctx.fold_limit:
                rest.append(b)
                continue
            for o, r in zip(node.output, res):
                if o:
                    constants[o] = r
                    store(o, r)
            self.folded += 1
        return rest

    @classmethod
    def from_graph(cls, graph: onnx.GraphProto, opsets: dict, ctx: BuildContext, nested: bool = False,
                   outer_constants: dict | None = None):
        constants = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
        for sp in graph.sparse_initializer:
            constants[sp.values.name] = sparse_to_dense(sp)
        if outer_constants:  # enclosing-scope constants this graph reads and does not shadow
            defined = set(constants) | {i.name for i in graph.input} | {o for n in graph.node for o in n.output}
            for name in _used_names(graph) - defined:
                if name in outer_constants:
                    constants[name] = outer_constants[name]
        plan = cls(graph.node, [i.name for i in graph.input], [o.name for o in graph.output],
                   constants, opsets, ctx, nested)
        plan.output_args = [node_arg(o) for o in graph.output]  # lets Loop/Scan shape empty scan outputs
        return plan

    def run(self, inputs: list, outer: dict | None = None) -> list:
        """Run with positional inputs (missing trailing ones are None); `outer` feeds free names."""
        n = len(self.input_slots)
        if len(inputs) != n:  # a missing input keeps its template value (None, or an initializer)
            inputs = list(inputs[:n]) + [self.template[s] for s in self.input_slots[len(inputs):]]
        return self._compiled(inputs, outer)

    def runner(self, n_inputs: int):
        """fn(inputs, outer) -> outputs, like run, for a caller that always passes `n_inputs` inputs
        (a Loop/Scan body, run once per iteration): the compiled function itself when that count is
        the plan's, so an iteration pays no call through run."""
        return self._compiled if n_inputs == len(self.input_slots) else self.run

    def run_inputs(self, ins: list, outer: dict | None = None, sig: tuple | None = None) -> list:
        """Run with one value per input (plan.input_names order, defaults included): the compiled
        function, or the one specialized for these inputs' shapes (specialize.py),
        and an If branch's for the shapes of the outer values it reads.
        `sig`: signature(ins), when the caller knows it already."""
        if not self._fixed:
            return self._compiled(ins, outer)
        if sig is None:
            sig = signature(ins + [outer[n] for n, _ in self.outer_slots] if self.outer_slots else ins)
        if sig is None:
            return self._compiled(ins, outer)
        fn = self._specialized.get(sig)
        if fn is not None:
            return fn(ins, outer)
        if not self._budget.earned(sig, self._specialized):  # not repeated enough (yet)
            return self._compiled(ins, outer)
        outputs, self._specialized[sig] = specialize(self, ins, outer, self._fixed, KernelFailed)
        return outputs

    def compiled_for(self, sig: tuple | None):
        """The function run_inputs calls for inputs of signature `sig` (no outer values), once it
        is final: the compiled plan, or the one specialized for `sig`; None until then."""
        if not self._fixed:
            return self._compiled
        return self._specialized.get(sig) if sig is not None else None

    def run_named(self, feeds: dict, outer: dict | None, profile: Profile | None = None) -> list:
        if profile is None and feeds.keys() <= self._input_set:
            return self.run_inputs([feeds.get(n, d) for n, d in self._input_defaults], outer)
        env = self.template.copy()
        slots = self.slots
        for name, v in feeds.items():
            env[slots[name]] = v
        if profile is not None:
            return run_profiled(self, env, outer, profile, {id(v) for v in feeds.values()})
        return self._loop(env, outer)

    def reprepare(self, i: int, new_constants: dict):
        """Step i's kernel prepared for its inputs' constant values plus `new_constants` ({slot:
        value}); None when its prepare hook does no better than the step's kernel."""
        b = self._generic[i]
        names = {s: n for n, s in self.slots.items()}
        consts = {**self._constants, **{names[s]: v for s, v in new_constants.items()}}
        nb = _prepared(b, consts, self._ctx)
        return None if nb is b else nb[3]

    def _loop(self, env, outer):
        for name, s in self.outer_slots:
            env[s] = outer[name]
        step = None
        try:
            for step in self.steps:
                fn, ins, outs, attrs, frees, _ = step
                args = [env[i] for i in ins]
                for s in frees:  # dropped before the call: the kernel may reuse a dying input
                    env[s] = None
                res = fn(args, attrs)
                for s, v in zip(outs, res):
                    env[s] = v
                res = v = None  # holds no output into the next step (it would block reuse there)
        except GraphoptError:
            raise
        except Exception as e:
            raise KernelFailed(f"{step[5] if step else 'plan'} failed: {type(e).__name__}: {e}") from e
        return [env[s] for s in self.output_slots]


def _used_names(graph) -> set:
    """Every value name the graph's nodes (and their subgraphs' nodes) read."""
    used = set()
    for n in graph.node:
        used.update(n.input)
        for a in n.attribute:
            for g in ([a.g] if a.type == onnx.AttributeProto.GRAPH else
                      a.graphs if a.type == onnx.AttributeProto.GRAPHS else []):
                used |= _used_names(g)
    return used


def runs_nested_plans(fn, attrs: dict) -> bool:
    """The step runs a nested plan: a function body, or a subgraph held in an attribute."""
    return isinstance(fn, (LocalFunctionCall, SchemaFunctionCall)) or any(
        isinstance(v, Plan) or (isinstance(v, list) and v and isinstance(v[0], Plan)) for v in attrs.values())


def constant_value(attrs: dict):
    """The value of a Constant node, from its resolved attributes."""
    from graphopt.kernels.cpu.shape import constant
    try:
        return constant([], attrs)[0]
    except ValueError:
        raise InvalidModel("Constant node without a value attribute") from None


def formal_inputs(node, domain, opset) -> list[str]:
    """The node's inputs padded with "" (absent: the kernel sees None) up to the schema's count."""
    names = list(node.input)
    schema = get_schema(domain, node.op_type, opset)
    if schema is not None and schema.inputs and all(
            f.option != onnx.defs.OpSchema.FormalParameterOption.Variadic for f in schema.inputs):
        names += [""] * (len(schema.inputs) - len(names))
    return names


def _with_outer(fn, n_explicit: int, names: list):
    """Kernels of If/Loop/Scan get the outer values their subgraphs read as attrs['__outer__'].
    The wrapper is generated per node with the names as a dict display ({'t': inputs[2], ...}):
    on three names it builds the dict in 0.13 us where dict(zip(names, inputs[n:])) took 0.55, a cost
    every If/Loop/Scan call pays."""
    if fn is None:
        return None
    entries = ", ".join(f"{name!r}: inputs[{n_explicit + j}]" for j, name in enumerate(names))
    source = ("def call(inputs, attrs):\n"
              f"    return fn(inputs[:{n_explicit}], {{**attrs, '__outer__': {{{entries}}}}})\n")
    env = {"fn": fn}
    exec(compile(source, "<graphopt outer>", "exec"), env)  # noqa: S102  (names only as repr() literals)
    return env["call"]


def _prepared(b, constants, ctx):
    """Give the kernel's prepare hook (if any) the node's constant inputs; use what it returns."""
    node, attrs, implicit, fn, explicit, domain, opset = b
    if fn is None or implicit or isinstance(fn, (LocalFunctionCall, SchemaFunctionCall)):
        return b
    prep = registry.lookup_prepare(domain, node.op_type, opset, ctx.device)
    if prep is None:
        return b
    consts = [constants.get(u, registry.DYNAMIC) if u else None for u in explicit]
    try:
        fast = prep(attrs, consts, fn)
    except (ValueError, TypeError, IndexError):  # a shape the hook cannot lay out: the generic kernel copes
        fast = None
    return b if fast is None else (node, attrs, implicit, fast, explicit, domain, opset)


def bind_node(node, domain, opset, attrs, opsets, ctx):
    """The callable that runs `node`: a model-local function, a kernel, or the schema's function body."""
    local = ctx.functions.get((node.domain, node.op_type))
    if local is not None:
        return LocalFunctionCall(local, node, opsets, ctx, _body_plan)
    fn = registry.lookup(domain, node.op_type, opset, ctx.device)
    if fn is not None:
        return fn
    schema = get_schema(domain, node.op_type, opset)
    if schema is not None and (schema.has_function or schema.has_context_dependent_function):
        return SchemaFunctionCall(schema, node, opset, opsets, ctx, _body_plan)
    return None


def _body_plan(nodes, inputs, outputs, opsets, ctx) -> Plan:
    """A function body's plan (functions.py builds them through this, so it need not import Plan)."""
    return Plan(nodes, inputs, outputs, {}, opsets, ctx, nested=False, function=True)


def toposort_nodes(built, defined: set):
    """Nodes in dependency order (graphs are usually sorted already: then this is one pass)."""
    available = set(defined)
    produced_by = {}
    for idx, (node, *_) in enumerate(built):
        for o in node.output:
            if o:
                produced_by[o] = idx
    order = []
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
            progress = True
            available.update(o for o in node.output if o)
        if not progress:
            names = [built[i][0].name or built[i][0].op_type for i in later[:5]]
            raise InvalidModel(f"the graph has a cycle through node(s) {names}")
        remaining = later
    return order

