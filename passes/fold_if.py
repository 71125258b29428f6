"""O1: an `If` whose condition is a constant is replaced by the branch it takes, inlined.

The condition may be an initializer / Constant from the start or become one through folding (a
Shape -> Gather -> Equal chain on static dims): this pass runs right after folding, and the pass
manager repeats the pipeline until nothing changes. Inlining:
- the taken branch's nodes move into the enclosing graph at the If's place (they share the outer
  Variable objects they read, so values from outer scopes keep working, and nested subgraphs come
  along as node attributes);
- each If output keeps its name (it may be a graph output or read later): Identity(branch output)
  produces it (cleanup removes the Identity where a rename is legal);
- a branch-local value (initializer, node output, nested graph input) whose name is used by another
  tensor in the enclosing graph or its other subgraphs gets a fresh name;
- the untaken branch is disconnected, so use-def lists forget its reads.
A condition that is not a one-element constant leaves the If alone.
"""
from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from graphopt import ir
from graphopt.compiler.pass_manager import PassResult, register_pass
from graphopt.compiler.rewrite import STANDARD_DOMAINS


@register_pass("fold-if", level=1)
def fold_constant_if(graph: gs.Graph, ctx) -> PassResult:
    """Replace an If with a constant condition by its taken branch, inlined (If output names kept)."""
    folded = 0
    for node in list(graph.nodes):
        branch = _taken_branch(node)
        if branch is None:
            continue
        _inline(graph, node, branch)
        folded += 1
    return PassResult(folded > 0, {"ifs_inlined": folded} if folded else {})


def _taken_branch(node: gs.Node) -> gs.Graph | None:
    if node.op != "If" or node.domain not in STANDARD_DOMAINS or not node.inputs:
        return None
    value = ir.const_value(node.inputs[0])
    if value is None or np.asarray(value).size != 1:
        return None
    branch = node.attrs.get("then_branch" if bool(np.asarray(value).reshape(-1)[0]) else "else_branch")
    if not isinstance(branch, gs.Graph) or branch.inputs or len(branch.outputs) != len(node.outputs):
        return None
    return branch


def _tensors(g: gs.Graph):
    yield from g.inputs
    yield from g.outputs
    for n in g.nodes:
        yield from n.inputs
        yield from n.outputs


def _inline(graph: gs.Graph, node: gs.Node, branch: gs.Graph) -> None:
    inner = ir.all_graphs(branch)
    _rename_clashes(graph, node, inner)
    outs = list(node.outputs)
    for sub in ir.subgraphs(node):
        if sub is not branch:  # the untaken branch: its reads of outer values go away
            for g in ir.all_graphs(sub):
                for n in g.nodes:
                    ir.detach(n)
    branch_outputs = list(branch.outputs)
    moved = list(branch.nodes)
    branch.nodes, branch.outputs = [], []
    ir.detach(node)
    keep = [gs.Node("Identity", name=ir.fresh_name(f"{node.name or 'if'}_out"), inputs=[src], outputs=[out])
            for src, out in zip(branch_outputs, outs) if not out.is_empty()]
    at = next(i for i, n in enumerate(graph.nodes) if n is node)
    graph.nodes[at:at + 1] = moved + keep


def _rename_clashes(graph: gs.Graph, node: gs.Node, inner: list[gs.Graph]) -> None:
    """Give branch-local tensors fresh names where another tensor of `graph`'s scope has their name."""
    skip = {id(g) for sub in ir.subgraphs(node) for g in ir.all_graphs(sub)}
    taken: dict[str, set[int]] = {}
    for g in ir.all_graphs(graph):
        if id(g) in skip:
            continue
        for t in _tensors(g):
            if t.name:
                taken.setdefault(t.name, set()).add(id(t))
    for o in node.outputs:  # the If's outputs keep their names; branch values must not take them
        if o.name:
            taken.setdefault(o.name, set()).add(id(o))
    local: dict[int, gs.Tensor] = {}
    for g in inner:
        for t in g.inputs:
            local[id(t)] = t
        for n in g.nodes:
            for t in n.outputs:
                local[id(t)] = t
            for t in n.inputs:
                if isinstance(t, gs.Constant) and id(t) not in taken.get(t.name, ()):  # not an outer one
                    local[id(t)] = t
    for t in local.values():
        if t.name and taken.get(t.name, set()) - {id(t)}:
            t.name = ir.fresh_name(t.name)
