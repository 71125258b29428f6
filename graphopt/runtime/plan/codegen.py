"""A Plan's steps compiled to one straight-line Python function.

The generic loop (Plan._loop) pays, per node, for a tuple unpack, a list comprehension over slot
indices, a loop over the slots to free and a zip over the results: about 1-2 us, which is most of
the time of a small model. Here every slot becomes a local variable of a generated function,
constants, kernels and attribute dicts become its globals, and each step is three statements:

    _a = [v3, k7]          # the kernel's argument list
    del v3                 # v3 dies here: the list now holds its only reference
    v9 = f4(_a, a4)[0]     # so the kernel may write its result into it (kernels/cpu/_inplace.py)

A value is deleted before the call of its last user exactly as the loop sets its slot to None, and
`_a` is rebound at every step as the loop rebinds `args`, so the reference counts a kernel sees (and
with them the in-place reuse decisions) and the lifetime of every buffer are the loop's.
A failure is mapped back to its step through the traceback's line number (no per-step bookkeeping
on the fast path) and raised as KernelFailed naming the node, like the loop does.
"""
from __future__ import annotations

from graphopt.errors import GraphoptError

_FILENAME = "<graphopt plan>"


def compile_plan(plan, failed_cls, steps=None, constants=None):
    """fn(inputs, outer) -> outputs for `plan`; inputs are positional, one per plan.input_slots.
    `steps` (default plan.steps) may leave out steps whose outputs `constants` ({slot: value})
    supplies (specialize.py); every value dies after its last use in `steps`."""
    steps = plan.steps if steps is None else steps
    constants = constants or {}
    none_slot = plan.slots["\0none"]
    trash_slot = plan.slots["\0trash"]
    local = set(plan.input_slots) | {s for _, s in plan.outer_slots}
    for _fn, _ins, outs, *_ in steps:
        local.update(o for o in outs if o != trash_slot)
    last_use = {}
    for i, step in enumerate(steps):
        for s in step[1]:
            last_use[s] = i
    keep = set(plan.output_slots)
    env = {"_GraphoptError": GraphoptError, "_failed": None}

    def read(s):
        if s == none_slot:
            return "None"
        if s in local:
            return f"v{s}"
        value = constants[s] if s in constants else plan.template[s]
        if value is None:
            return "None"
        env[f"k{s}"] = value
        return f"k{s}"

    lines = ["def _plan(_ins, _outer):", "    try:"]
    step_of_line = {}  # line number (1-based) -> step index
    body = []
    for j, s in enumerate(plan.input_slots):
        body.append(f"v{s} = _ins[{j}]")
    for name, s in plan.outer_slots:
        body.append(f"v{s} = _outer[{name!r}]")
    for i, (fn, ins, outs, attrs, _frees, _desc) in enumerate(steps):
        env[f"f{i}"], env[f"a{i}"] = fn, attrs
        stmts = [f"_a = [{', '.join(read(s) for s in ins)}]"]
        dying = [f"v{s}" for s in dict.fromkeys(ins) if s in local and last_use[s] == i and s not in keep]
        if dying:
            stmts.append(f"del {', '.join(dying)}")
        kept = [(j, s) for j, s in enumerate(outs) if s != trash_slot]
        call = f"f{i}(_a, a{i})"
        if len(outs) == 1 and kept:
            stmts.append(f"v{outs[0]} = ({call} or (None,))[0]")  # a kernel may return no value
        elif not kept:
            stmts.append(call)
        else:
            stmts.append(f"_r = {call}")
            stmts.append("_n = len(_r)")
            stmts.extend(f"v{s} = _r[{j}] if _n > {j} else None" for j, s in kept)
            stmts.append("del _r")  # would hold the outputs into the next step (blocking reuse)
        for st in stmts:
            body.append(st)
            step_of_line[len(lines) + len(body)] = i
    outputs = ", ".join(read(s) for s in plan.output_slots)
    body.append(f"return [{outputs}]")
    lines.extend("        " + b for b in body)
    lines += ["    except _GraphoptError:", "        raise",
              "    except Exception as _e:", "        raise _failed(_e) from _e"]
    source = "\n".join(lines) + "\n"

    def failed(e):
        tb = e.__traceback__
        i = step_of_line.get(tb.tb_lineno if tb is not None else -1)
        where = steps[i][5] if i is not None else "plan"
        return failed_cls(f"{where} failed: {type(e).__name__}: {e}")
    env["_failed"] = failed
    exec(compile(source, _FILENAME, "exec"), env)  # noqa: S102  (source generated above from slot numbers)
    fn = env["_plan"]
    fn.source = source  # for debugging: print(plan._compiled.source)
    return fn
