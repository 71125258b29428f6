"""Control flow (If, Loop, Scan), sequences and optionals.

Subgraph attributes arrive compiled: `attrs["body"].run(inputs, outer)` runs the body's plan, and
`attrs["__outer__"]` holds the enclosing-scope values the subgraphs read. Sequences are Python
lists of arrays (never mutated in place); an empty optional is None.
"""
from __future__ import annotations

import numpy as np

from ..registry import kernel
from ._util import np_dtype


@kernel("If", 1)
def if_(ins, at):
    branch = at["then_branch"] if bool(np.asarray(ins[0]).reshape(-1)[0]) else at["else_branch"]
    return branch.run([], at.get("__outer__"))


def _stack(values, arg=None):
    """Stack per-iteration values; with no iteration, an empty array typed from the body's output."""
    if values:
        return np.stack([np.asarray(v) for v in values])
    dtype, shape = np.float32, ()
    if arg is not None and arg.type_proto is not None and arg.type_proto.HasField("tensor_type"):
        elem = arg.type_proto.tensor_type.elem_type
        dtype = np_dtype(elem) if elem else dtype
        if arg.shape is not None and all(isinstance(d, int) for d in arg.shape):
            shape = tuple(arg.shape)
    return np.zeros((0,) + shape, dtype)


def _out_arg(body, i):
    return body.output_args[i] if i < len(body.output_args) else None


@kernel("Loop", 1)
def loop(ins, at):
    body, outer = at["body"], at.get("__outer__")
    trip = ins[0]
    cond = ins[1] if len(ins) > 1 else None
    carried = list(ins[2:])
    max_trip = int(np.asarray(trip).reshape(-1)[0]) if trip is not None else None
    keep_going = bool(np.asarray(cond).reshape(-1)[0]) if cond is not None else True
    n_scan = len(body.output_names) - 1 - len(carried)
    scans = [[] for _ in range(n_scan)]
    i = 0
    while keep_going and (max_trip is None or i < max_trip):
        outs = body.run([np.array(i, dtype=np.int64), np.array(keep_going), *carried], outer)
        keep_going = bool(np.asarray(outs[0]).reshape(-1)[0])
        carried = outs[1:1 + len(carried)]
        for acc, v in zip(scans, outs[1 + len(carried):]):
            acc.append(v)
        i += 1
    first = 1 + len(carried)
    return carried + [_stack(s, _out_arg(body, first + j)) for j, s in enumerate(scans)]


def _scan(body, outer, state, xs, at):
    n_in = len(xs)
    in_axes = at.get("scan_input_axes") or [0] * n_in
    in_dirs = at.get("scan_input_directions") or [0] * n_in
    # np.moveaxis costs microseconds even when it has nothing to move (axis 0, the usual case)
    xs = [np.moveaxis(x, ax % x.ndim, 0) if ax % x.ndim else x for x, ax in zip(xs, in_axes)]
    xs = [x[::-1] if d else x for x, d in zip(xs, in_dirs)]
    steps = xs[0].shape[0] if xs else 0
    n_state = len(state)
    n_out = len(body.output_names) - n_state
    outs_acc = [[] for _ in range(n_out)]
    for t in range(steps):
        res = body.run(list(state) + [x[t] for x in xs], outer)
        state = res[:n_state]
        for acc, v in zip(outs_acc, res[n_state:]):
            acc.append(v)
    out_axes = at.get("scan_output_axes") or [0] * n_out
    out_dirs = at.get("scan_output_directions") or [0] * n_out
    scans = []
    for j, (acc, ax, d) in enumerate(zip(outs_acc, out_axes, out_dirs)):
        y = _stack(acc[::-1] if d else acc, _out_arg(body, n_state + j))
        scans.append(np.moveaxis(y, 0, ax % y.ndim) if ax % y.ndim else y)
    return list(state), scans


@kernel("Scan", 9)
def scan(ins, at):
    m = at["num_scan_inputs"]
    state, xs = ins[:len(ins) - m], ins[len(ins) - m:]
    state, scans = _scan(at["body"], at.get("__outer__"), state, xs, at)
    return state + scans


@kernel("Scan", 8)
def scan_v8(ins, at):
    # opset 8: a leading batch axis on every state and scan input, plus optional sequence_lens
    m = at["num_scan_inputs"]
    rest = ins[1:]
    state, xs = rest[:len(rest) - m], rest[len(rest) - m:]
    batch = (state or xs)[0].shape[0]
    per = [_scan(at["body"], at.get("__outer__"), [s[b] for s in state],
                 [np.moveaxis(x[b], 0, 0) for x in xs],
                 {**at, "scan_input_axes": None, "scan_input_directions": at.get("directions")})
           for b in range(batch)]
    states = [np.stack([p[0][i] for p in per]) for i in range(len(state))]
    scans = [np.stack([p[1][i] for p in per]) for i in range(len(per[0][1]))] if per else []
    return states + scans


# --- sequences ----------------------------------------------------------------------------------
@kernel("SequenceEmpty", 11)
def sequence_empty(ins, at):
    return ([],)


@kernel("SequenceConstruct", 11)
def sequence_construct(ins, at):
    return (list(ins),)


@kernel("SequenceInsert", 11)
def sequence_insert(ins, at):
    seq, x = list(ins[0]), ins[1]
    pos = ins[2] if len(ins) > 2 and ins[2] is not None else None
    if pos is None:
        seq.append(x)
    else:
        p = int(np.asarray(pos).reshape(-1)[0])
        seq.insert(p if p >= 0 else p + len(seq), x)
    return (seq,)


@kernel("SequenceAt", 11)
def sequence_at(ins, at):
    return (ins[0][int(np.asarray(ins[1]).reshape(-1)[0])],)


@kernel("SequenceErase", 11)
def sequence_erase(ins, at):
    seq = list(ins[0])
    p = int(np.asarray(ins[1]).reshape(-1)[0]) if len(ins) > 1 and ins[1] is not None else -1
    del seq[p]
    return (seq,)


@kernel("SequenceLength", 11)
def sequence_length(ins, at):
    return (np.array(len(ins[0]), dtype=np.int64),)


@kernel("ConcatFromSequence", 11)
def concat_from_sequence(ins, at):
    seq, axis = ins[0], at["axis"]
    if at.get("new_axis"):
        return (np.stack(seq, axis=axis),)
    return (np.concatenate(seq, axis=axis),)


@kernel("SplitToSequence", 11)
def split_to_sequence(ins, at):
    x = ins[0]
    split = ins[1] if len(ins) > 1 and ins[1] is not None else None
    axis = at["axis"] % x.ndim
    if split is None:
        parts = np.split(x, x.shape[axis], axis=axis)
        if not at.get("keepdims", 1):
            parts = [np.squeeze(p, axis) for p in parts]
        return (parts,)
    split = np.asarray(split)
    if split.ndim == 0:
        n = int(split)
        bounds = list(range(n, x.shape[axis], n))
    else:
        bounds = np.cumsum(split)[:-1].tolist()
    return (np.split(x, bounds, axis=axis),)


@kernel("SequenceMap", 17)
def sequence_map(ins, at):
    body, outer = at["body"], at.get("__outer__")
    n = len(ins[0])
    outs = None
    for i in range(n):
        args = [x[i] if isinstance(x, list) else x for x in ins]
        res = body.run(args, outer)
        if outs is None:
            outs = [[] for _ in res]
        for acc, v in zip(outs, res):
            acc.append(v)
    return outs if outs is not None else [[] for _ in body.output_names]


# --- optionals ----------------------------------------------------------------------------------
@kernel("Optional", 15)
def optional(ins, at):
    return (ins[0] if ins else None,)


@kernel("OptionalHasElement", 15)
def optional_has_element(ins, at):
    return (np.array(bool(ins) and ins[0] is not None),)


@kernel("OptionalGetElement", 15)
def optional_get_element(ins, at):
    if ins[0] is None:
        raise ValueError("OptionalGetElement on an empty optional")
    return (ins[0],)

