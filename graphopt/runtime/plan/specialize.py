"""Plans specialized per input-shape signature: shape arithmetic folded to constants.

Models compute shapes at run time (Shape -> Gather -> Unsqueeze -> Concat -> Reshape/Expand,
position ids sliced to the sequence length, ...). For a fixed signature (the shape and dtype of
every feed) those values never change, yet each costs a kernel call per run, and the kernels that
consume them (Reshape, Expand, ...) cannot be prepared for them. Here:

  * at build, a static pass marks the steps whose outputs are fixed by the signature: a Shape or
    Size of a value whose *shape* is fixed by the signature, or a deterministic op all of whose
    inputs are such values or constants. A value's shape is fixed by the signature when it is a
    feed or a constant, or comes out of an op whose output shape follows from its inputs' shapes
    (op_traits.shape_from_shapes), or from its inputs' shapes and the values of some inputs that are
    themselves fixed (op_traits.SHAPE_VALUE_INPUTS: Reshape's shape, Slice's starts, ...). Any other op (NonZero,
    Loop, a custom op, ...) ends the chain: nothing downstream of it is treated as fixed.
  * at the first run with a new signature, the plan runs once step by step (with the same
    results as ever) and keeps those steps' outputs; then a compiled function without those steps
    is built, their outputs being constants, and the consumers re-prepared for them
    (registry.prepare hooks). Later runs with that signature take the specialized function.
  * an If branch is specialized the same way, its signature being the shapes and dtypes of the
    outer values it reads: PyTorch exports test shapes inside branches (squeeze a dim when it is
    1, ...), nested several Ifs deep, and each level's Shape -> Gather -> Equal then folds.
"""
from __future__ import annotations

import numpy as np

from graphopt.errors import GraphoptError
from graphopt.ir.op_traits import MAY_DRAW_RANDOM, SHAPE_READERS, shape_from_shapes, shape_value_inputs
from graphopt.runtime.plan.codegen import compile_plan

VALUE_LIMIT = 1 << 20  # a signature-fixed value above this many bytes is computed at run time, not held
SIGNATURES_KEPT = 8


class SpecializeBudget:
    """When a plan's input signature earns a specialized function (see the module's docstring)."""

    def __init__(self):
        self.counts = {}  # signature -> runs without a specialized function
        self.needed = 2  # runs that earn one; doubled at every eviction
        self.evictions = 0

    def earned(self, sig, specialized: dict) -> bool:
        """Count a run of `sig` (not in `specialized`); True when it earns a specialization now
        (the oldest one in `specialized` is then evicted when SIGNATURES_KEPT are held)."""
        n = self.counts.get(sig, 0) + 1
        if n < self.needed:
            if len(self.counts) >= 8 * SIGNATURES_KEPT and sig not in self.counts:
                self.counts.clear()  # bounded: signatures that never repeat are forgotten
            self.counts[sig] = n
            return False
        self.counts.pop(sig, None)
        if len(specialized) >= SIGNATURES_KEPT:
            del specialized[next(iter(specialized))]
            self.evictions += 1
            self.needed *= 2
        return True


def fixed_steps(plan) -> list[int]:
    """Indices of the steps whose outputs are fixed by the feeds' shapes and dtypes (see above)."""
    const = set(plan.constant_slots) - set(plan.input_slots)  # an initializer a feed may override is not fixed
    # an If branch's signature includes the outer values it reads (Plan.run_inputs)
    shape_known = set(plan.input_slots) | {s for _, s in plan.outer_slots} | const | {plan.slots["\0none"]}
    value_known = const | {plan.slots["\0none"]}
    found = []
    for i, ((fn, ins, outs, attrs, _f, _d), op) in enumerate(zip(plan.steps, plan.ops)):
        if op[1] in MAY_DRAW_RANDOM or plan.opaque[i]:
            continue  # may draw random numbers, or hold ops that do
        if op[0] == "" and op[1] in SHAPE_READERS:
            fixed = bool(ins) and ins[0] in shape_known
        else:
            fixed = bool(ins) and all(s in value_known for s in ins)
        if fixed:
            found.append(i)
            value_known.update(outs)
        value_inputs = shape_value_inputs(*op)
        if fixed or (shape_from_shapes(*op) and all(s in shape_known for s in ins)) or (
                value_inputs is not None and all(s in shape_known for s in ins)
                and all(ins[j] in value_known for j in value_inputs if j < len(ins))):
            shape_known.update(outs)
    has_reader = any(plan.ops[i][0] == "" and plan.ops[i][1] in SHAPE_READERS for i in found)
    return found if has_reader else []


def signature(ins) -> tuple | None:
    """(shape, dtype) per feed, or None when a feed is not an ndarray (sequences, optionals)."""
    try:
        return tuple((v.shape, v.dtype) for v in ins)
    except AttributeError:
        return None


def specialize(plan, ins, outer, fixed: list[int], failed_cls):
    """Run `plan` once step by step on `ins` (its outputs are returned) and build the compiled
    function for this signature: the `fixed` steps' outputs become constants."""
    fixed_set = set(fixed)
    env = plan.template.copy()
    for s, v in zip(plan.input_slots, ins):
        env[s] = v
    for name, s in plan.outer_slots:
        env[s] = outer[name]
    captured = {}
    step = None
    try:
        for i, step in enumerate(plan.steps):
            fn, sl, outs, attrs, frees, _ = step
            args = [env[j] for j in sl]
            for s in frees:
                env[s] = None
            res = fn(args, attrs)
            for s, v in zip(outs, res):
                env[s] = v
            if i in fixed_set:
                captured.update(zip(outs, res))  # held here: no later kernel may reuse them in place
            res = v = args = None
    except GraphoptError:
        raise
    except Exception as e:
        raise failed_cls(f"{step[5] if step else 'plan'} failed: {type(e).__name__}: {e}") from e
    outputs = [env[s] for s in plan.output_slots]

    keep = set(plan.output_slots)
    trash = plan.slots["\0trash"]
    folded = {}
    for i in fixed:
        outs = [s for s in plan.steps[i][2] if s != trash]  # an output nobody reads needs no constant
        vals = [np.asarray(v) if isinstance(v, np.generic) else v for v in (captured.get(s) for s in outs)]
        if all(type(v) is np.ndarray and v.nbytes <= VALUE_LIMIT for v in vals) and not keep & set(outs):
            folded.update(zip(outs, vals))
    # walk back from the outputs: a step goes when its outputs are constants now, or (being
    # deterministic) when nothing left reads them
    needed, kept = set(keep), []
    for i in range(len(plan.steps) - 1, -1, -1):
        st = plan.steps[i]
        if i in fixed_set and (set(st[2]) - {trash} <= folded.keys() or not needed & set(st[2])):
            continue
        needed.update(st[1])
        kept.append(i)
    steps = []
    for i in reversed(kept):
        st = plan.steps[i]
        if any(s in folded for s in st[1]):  # prepare the kernel again for its new constant inputs
            fast = plan.reprepare(i, {s: folded[s] for s in st[1] if s in folded})
            st = st if fast is None else (fast,) + tuple(st[1:])
        steps.append(st)
    return outputs, compile_plan(plan, failed_cls, steps=steps, constants=folded)
