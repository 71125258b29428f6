"""Declarative rewrite rules and the one driver that applies them to a fixed point.

A rule is data: a pattern written in the op vocabulary of the model, a replacement function, and
an optional check that returns *why* it refuses. Example (x*1 -> x):

    Rule("mul-by-one", Op("Mul", Var("x"), Const("one", all_equal(1)), commutative=True),
         lambda m: m["x"], check=keeps_shape("x", "one"))

The driver indexes rules by root op, walks a worklist (no whole-graph rescans per rewrite),
records hits, and for traced rules the best near-miss and its reason.
"""
from __future__ import annotations

from collections import Counter, defaultdict, deque
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from graphopt import ir
from graphopt.ir.attributes import attr_value  # noqa: F401  (rules read attributes through rewrite)
from graphopt.ir.op_traits import COMMUTATIVE_OPS
from graphopt.errors import LimitExceeded

STANDARD_DOMAINS = ("", "ai.onnx", None)


# ---------------------------------------------------------------- pattern vocabulary

class Var:
    """Matches any value and captures it. The same name twice must bind the same value."""

    def __init__(self, name: str):
        self.name = name


class Const:
    """Matches a constant (initializer or Constant node) and captures the array.

    Const("k", where)      a constant whose value passes `where` (any constant when None)
    Const(0.5)             a literal: a one-element constant within tolerance of 0.5 (rtol, plus the
    Const(math.sqrt(2), rtol=1e-4)   constant dtype's own rounding); captured under the name "=0.5"
    """

    def __init__(self, name: str | float, where: Callable[[np.ndarray], bool] | None = None, *,
                 rtol: float = 1e-6, atol: float = 0.0):
        if isinstance(name, (int, float)) and not isinstance(name, bool):
            value = float(name)
            name, where = f"={name!r}", (lambda v: close_to(v, value, rtol=rtol, atol=atol))
        self.name, self.where = name, where


def close_to(value: np.ndarray, target: float, rtol: float = 1e-6, atol: float = 0.0) -> bool:
    """A one-element finite constant within atol + rtol*|target| of `target`, or within its own
    dtype's rounding of it (exporters spell sqrt(2) with varying digits; float16 cannot come closer)."""
    if value.size != 1 or not np.issubdtype(value.dtype, np.number) or not np.isfinite(value).all():
        return False
    tol = atol + rtol * abs(target)
    if np.issubdtype(value.dtype, np.floating):
        tol = max(tol, float(np.finfo(value.dtype).eps) * abs(target))
    return abs(float(value.reshape(-1)[0]) - target) <= tol


class Op:
    """Matches a node of `op` (one type or a tuple of types) whose inputs match `inputs` in order.

    attrs: name -> value or predicate (schema defaults apply when the attribute is absent).
    commutative: a two-input op may match its inputs in either order; by default, when every op
    in `op` is commutative (graphopt.ir.op_traits.COMMUTATIVE_OPS: Add, Mul, Max, Min, And, ...).
    single_use: (non-root only) the node's outputs feed only the matched parent and are not graph
    outputs, so removing it is safe. name: capture the node as m.nodes[name].
    """

    def __init__(self, op: str | tuple[str, ...], *inputs, attrs: dict | None = None, domain: str = "",
                 commutative: bool | None = None, single_use: bool = True, name: str | None = None,
                 allow_extra_inputs: bool = False):
        self.ops = (op,) if isinstance(op, str) else tuple(op)
        self.inputs, self.attrs, self.domain = inputs, attrs or {}, domain
        if commutative is None:
            commutative = all(o in COMMUTATIVE_OPS for o in self.ops)
        self.commutative, self.single_use, self.name = commutative, single_use, name
        self.allow_extra_inputs = allow_extra_inputs


@dataclass
class Rule:
    name: str
    pattern: Op
    rewrite: Callable[["Match"], Any]  # -> replacement value(s) for the root outputs, or None to decline
    check: Callable[["Match"], str | None] | None = None
    doc: str = ""
    min_opset: int = 0  # below it the rule is skipped whole (a traced rule reports "opset < N")
    near_miss_from: float = 0  # traces ignore misses shallower than this (a root op shared by unrelated nodes)


# ---------------------------------------------------------------- matching

@dataclass
class Match:
    graph: gs.Graph
    root: gs.Node
    opset: int
    values: dict = field(default_factory=dict)  # Var/Const name -> gs.Tensor
    consts: dict = field(default_factory=dict)  # Const name -> np.ndarray
    nodes: dict = field(default_factory=dict)  # Op name -> gs.Node
    matched: list = field(default_factory=list)  # every matched node, root first
    new_nodes: list = field(default_factory=list)
    rebound: list = field(default_factory=list)  # (old, new): non-root values the rewrite also replaces

    def __getitem__(self, name):
        return self.values[name]

    def const(self, name) -> np.ndarray:
        return self.consts[name]

    # builders used by rewrite functions; the driver inserts the nodes
    def op(self, op_type: str, inputs, attrs=None, outputs: int = 1, domain: str = "", dtype=None, shape=None):
        outs = [gs.Variable(ir.fresh_name(f"{self.root.name or op_type}_{op_type}"), dtype=dtype, shape=shape)
                for _ in range(outputs)]
        node = gs.Node(op_type, name=ir.fresh_name(self.root.name or op_type), attrs=dict(attrs or {}),
                       inputs=list(inputs), outputs=outs, domain=domain or None)
        self.new_nodes.append(node)
        return outs[0] if outputs == 1 else outs

    def rebind(self, old: gs.Tensor, new: gs.Tensor) -> None:
        """Also replace `old`, the output of a matched non-root node (matched with single_use=False),
        by `new` everywhere: for a fused op that computes that intermediate too (e.g. the sum output
        of SkipLayerNormalization), so the node that made it can go."""
        self.rebound.append((old, new))

    def constant(self, array, base: str = "c") -> gs.Constant:
        return gs.Constant(ir.fresh_name(f"{self.root.name or 'const'}_{base}"), np.asarray(array))


def _label(node: gs.Node) -> str:
    """How traces name a node: its name, or (exporters often leave names empty) its op and first output."""
    if node.name:
        return node.name
    return f"{node.op} -> {node.outputs[0].name}" if node.outputs else node.op


class _Fail(Exception):
    """depth ranks near-misses: failing on a node whose op already matched is nearer than finding the
    wrong op (or no node, or no constant) at that depth, hence `depth - 0.5` for the latter."""

    def __init__(self, depth: float, reason: str):
        self.depth, self.reason = depth, reason


def match(pattern: Op, node: gs.Node, graph: gs.Graph, opset: int) -> Match:
    """Match `pattern` rooted at `node`; raises _Fail(depth, reason) on the first mismatch."""
    m = Match(graph=graph, root=node, opset=opset)
    _match_op(pattern, node, m, depth=0, parent=None)
    return m


def _match_op(p: Op, node: gs.Node, m: Match, depth: int, parent: gs.Node | None) -> int:
    if node.op not in p.ops:
        raise _Fail(depth - 0.5, f"'{_label(node)}' is {node.op}, expected {'/'.join(p.ops)}")
    if (node.domain or "") != p.domain and not (p.domain == "" and node.domain in STANDARD_DOMAINS):
        raise _Fail(depth - 0.5, f"'{_label(node)}' is in domain '{node.domain}'")
    if parent is not None and p.single_use:
        for out in node.outputs:
            if ir.is_graph_output(m.graph, out):
                raise _Fail(depth, f"'{out.name}' is a graph output")
            if any(c is not parent for c in out.outputs):
                raise _Fail(depth, f"'{out.name}' has other consumers")
    for key, want in p.attrs.items():
        got = attr_value(node, key, m.opset)
        ok = want(got) if callable(want) else got == want
        if not ok:
            raise _Fail(depth, f"'{_label(node)}' attribute {key}={got!r} does not fit")
    inputs = list(node.inputs)
    while inputs and inputs[-1].is_empty():  # trailing omitted optionals
        inputs.pop()
    if len(inputs) != len(p.inputs) and not (p.allow_extra_inputs and len(inputs) > len(p.inputs)):
        raise _Fail(depth, f"'{_label(node)}' has {len(inputs)} inputs, pattern has {len(p.inputs)}")
    orders = [list(p.inputs)]
    if p.commutative and len(p.inputs) == 2:
        orders.append(list(reversed(p.inputs)))
    best: _Fail | None = None
    for order in orders:
        if len(orders) > 1:  # only a second try needs the bindings restored
            saved = (dict(m.values), dict(m.consts), dict(m.nodes), list(m.matched))
        try:
            m.matched.append(node)
            deepest = depth + 1
            for sub, t in zip(order, inputs):
                deepest = max(deepest, _match_input(sub, t, m, depth + 1, node))
            if p.name:
                m.nodes[p.name] = node
            return deepest
        except _Fail as f:
            if len(orders) > 1:
                m.values, m.consts, m.nodes, m.matched = saved
            if best is None or f.depth > best.depth:
                best = f
    raise best


def _match_input(sub, t: gs.Tensor, m: Match, depth: int, parent: gs.Node) -> int:
    if isinstance(sub, Var):
        return _bind(m, sub.name, t, depth)
    if isinstance(sub, Const):
        value = ir.const_value(t)
        if value is None:
            raise _Fail(depth - 0.5, f"'{t.name}' is not a constant")
        if sub.where is not None and not sub.where(value):
            raise _Fail(depth, f"constant '{t.name}' does not fit")
        m.consts[sub.name] = value
        return _bind(m, sub.name, t, depth)
    node = ir.producer(t)
    if node is None:
        raise _Fail(depth - 0.5, f"'{t.name}' has no producer")
    return _match_op(sub, node, m, depth, parent)


def _bind(m: Match, name: str, t: gs.Tensor, depth: int) -> int:
    if name in m.values and m.values[name] is not t:
        raise _Fail(depth, f"'{name}' bound to two different values")
    m.values[name] = t
    return depth


# ---------------------------------------------------------------- the driver

@dataclass
class RuleStats:
    hits: Counter = field(default_factory=Counter)
    trace: list = field(default_factory=list)  # human-readable lines for traced rules
    near_miss: dict = field(default_factory=dict)  # rule name -> (depth, node name, reason)

    @property
    def total(self) -> int:
        return sum(self.hits.values())


def apply_rules(graph: gs.Graph, rules: list[Rule], opset: int, trace=(), max_rewrites: int | None = None,
                stats: RuleStats | None = None) -> RuleStats:
    """Apply `rules` to `graph` (not its subgraphs) until none fires. Raises past max_rewrites."""
    stats = stats or RuleStats()
    traced = set(trace)
    by_op: dict[str, list[Rule]] = defaultdict(list)
    for rule in rules:
        if rule.min_opset > opset:
            root = None if not ({rule.name, "all"} & traced) else next(
                (n for n in graph.nodes if n.op in rule.pattern.ops), None)
            if root is not None:
                stats.near_miss[rule.name] = (0, _label(root), f"opset < {rule.min_opset}")
            continue
        for op in rule.pattern.ops:
            by_op[op].append(rule)
    cap = max_rewrites or 10 * len(graph.nodes) + 1000
    alive = {id(n) for n in graph.nodes}
    added: list[gs.Node] = []
    work = deque(n for n in graph.nodes if n.op in by_op)
    queued = {id(n) for n in work}
    nested = ir.nested_graphs(graph)

    def push(n):
        if id(n) in alive and id(n) not in queued and n.op in by_op:
            queued.add(id(n))
            work.append(n)

    while work:
        node = work.popleft()
        queued.discard(id(node))
        if id(node) not in alive:
            continue
        for rule in by_op[node.op]:
            show = rule.name in traced or "all" in traced
            if not show and _producers_differ(rule.pattern, node):
                continue  # cheap rejection; traced rules take the full match to report why
            try:
                m = match(rule.pattern, node, graph, opset)
                reason = rule.check(m) if rule.check else None
                if reason:
                    raise _Fail(99, reason)
                result = rule.rewrite(m)
                if result is None:
                    raise _Fail(99, "rewrite declined")
            except _Fail as f:
                if show and f.depth >= rule.near_miss_from:
                    best = stats.near_miss.get(rule.name)
                    if best is None or f.depth > best[0]:
                        stats.near_miss[rule.name] = (f.depth, _label(node), f.reason)
                continue
            results = list(result) if isinstance(result, (list, tuple)) else [result]
            where = _label(node)  # before the commit detaches the node from its outputs
            _commit(graph, m, results, alive, added, push, nested)
            stats.hits[rule.name] += 1
            if show:
                stats.trace.append(f"{rule.name}: fired at '{where}' ({node.op})")
                if stats.near_miss.get(rule.name, (0, None))[1] == where:  # another variant of it missed here
                    del stats.near_miss[rule.name]
            if stats.total > cap:
                raise LimitExceeded(f"rule rewriting did not converge after {cap} rewrites "
                                    f"(last rule: {rule.name} at '{where}')")
            break
    if added or len(alive) != len(graph.nodes):
        graph.nodes = [n for n in graph.nodes if id(n) in alive]
    return stats


def _fits_producer(sub, t: gs.Tensor) -> bool:
    return not isinstance(sub, Op) or (bool(t.inputs) and t.inputs[0].op in sub.ops)


def _producers_differ(p: Op, node: gs.Node) -> bool:
    """True when an input's producer is not of an op type the pattern asks for there (so match would fail)."""
    inputs = node.inputs
    if len(inputs) < len(p.inputs):
        return False  # let match explain
    if all(_fits_producer(s, t) for s, t in zip(p.inputs, inputs)):
        return False
    return not (p.commutative and len(p.inputs) == 2 and _fits_producer(p.inputs[0], inputs[1])
                and _fits_producer(p.inputs[1], inputs[0]))


def _commit(graph, m: Match, results, alive: set, added: list, push, nested) -> None:
    root = m.root
    graph.nodes.extend(m.new_nodes)
    before = len(graph.nodes)
    for old, new in list(zip(list(root.outputs), results)) + m.rebound:
        if new is not None:
            ir.replace_all_uses(graph, old, new, nested)
    # replace_all_uses appends an Identity when a graph output must keep its name
    for node in graph.nodes[before - len(m.new_nodes):]:
        alive.add(id(node))
        added.append(node)
    touched = []
    removed = True
    while removed:  # root first frees single-use producers; repeat for values used twice in the match
        removed = False
        for node in m.matched:
            if id(node) in alive and all(not out.outputs and not ir.is_graph_output(graph, out)
                                         for out in node.outputs):
                touched.extend(ir.producer(t) for t in node.inputs)
                alive.discard(id(node))
                ir.detach(node)
                removed = True
    for node in m.new_nodes:
        push(node)
        for out in node.outputs:
            for c in out.outputs:
                push(c)
    for new in results + [new for _, new in m.rebound]:
        if isinstance(new, gs.Tensor):
            for c in new.outputs:
                push(c)
    for p in touched:
        if p is not None:
            push(p)


# ---------------------------------------------------------------- predicates for rule tables

def all_equal(x) -> Callable[[np.ndarray], bool]:
    return lambda v: v.size > 0 and bool(np.all(v == x))


def same_shape_after_broadcast(x: gs.Tensor, c: np.ndarray | gs.Tensor) -> bool:
    """True when broadcasting x with c cannot change x's shape (c is all ones and not of higher rank)."""
    cshape = c.shape if isinstance(c, np.ndarray) else c.shape
    if cshape is None or ir.rank(x) is None:
        return False
    if len(cshape) > len(x.shape):
        return False
    return all(d == 1 for d in cshape) or (ir.static_shape(x) is not None and
                                           np.broadcast_shapes(ir.static_shape(x), tuple(cshape)) == ir.static_shape(x))
