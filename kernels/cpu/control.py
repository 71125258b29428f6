"""Control flow (If, Loop, Scan), sequences and optionals.

Subgraph attributes arrive compiled: `attrs["body"].run(inputs, outer)` runs the body's plan, and
`attrs["__outer__"]` holds the enclosing-scope values the subgraphs read. Sequences are Python
lists of arrays (never mutated in place); an empty optional is None.

Loop and Scan run small bodies many times, so their per-iteration Python is kept short: the body's
compiled function is called directly (Plan.runner), the iteration counter and the body's `cond`
input are cached read-only 0-d arrays rather than a new np.array per iteration (read-only: a
kernel never writes into them, and one that comes out of the loop is copied), and scan outputs are
listed and built with one np.array call at the end (_stack), a fraction of np.stack's cost.
"""
from __future__ import annotations

import math

import numpy as np

from ..registry import kernel
from ._util import np_dtype


def _read_only(value) -> np.ndarray:
    a = np.array(value)
    a.flags.writeable = False
    return a


_TRUE = _read_only(True)
# _COUNTERS[i] is int64 i, read-only. The list is only ever replaced by a longer copy (never
# appended to), so a thread reading an old snapshot still sees correct counters.
_COUNTERS: list = []
_COUNTERS_KEPT = 4096  # beyond this a loop makes its counters as it goes


def _counters(n) -> list:
    """The cached counters, at least min(n, _COUNTERS_KEPT) of them."""
    global _COUNTERS
    have = _COUNTERS
    want = min(n, _COUNTERS_KEPT)
    if len(have) < want:
        grown = min(max(want, 2 * len(have)), _COUNTERS_KEPT)
        have = _COUNTERS = have + [_read_only(np.int64(i)) for i in range(len(have), grown)]
    return have


def _counter(i):
    have = _counters(i + 1)
    return have[i] if i < len(have) else np.array(i, dtype=np.int64)


def _truth(c) -> bool:
    """The boolean a cond tensor holds (its first element, like the reference implementation)."""
    if type(c) is np.ndarray and c.size == 1:
        return bool(c)
    return bool(np.asarray(c).reshape(-1)[0])


def _own(v):
    """A value leaving the loop: a cached read-only scalar (or a view of one) becomes a fresh array,
    as the caller would get from a loop that made its counters per iteration."""
    if type(v) is np.ndarray and v.size == 1 and not v.flags.writeable:
        return v.copy()
    return v


@kernel("If", 1)
def if_(ins, at):
    branch = at["then_branch"] if _truth(ins[0]) else at["else_branch"]
    return branch.run_inputs([], at.get("__outer__"))  # specialized on the outer values' shapes


def _stack(values, arg=None):
    """Stack per-iteration values; with no iteration, an empty array typed from the body's output."""
    if values:
        first = values[0]
        if type(first) is np.ndarray and first.dtype.kind != "O":
            # np.array builds the same array as np.stack from same-shaped, same-typed arrays at a third
            # of the cost per value and a quarter of the fixed cost (no per-value asarray, no expand_dims
            # and concatenate); anything else (ragged, mixed types) is left to np.stack
            try:
                y = np.array(values)
            except ValueError:
                y = None
            if y is not None and y.dtype == first.dtype and y.shape == (len(values),) + first.shape:
                return y
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


def _first_int(t) -> int:
    if type(t) is np.ndarray and t.size == 1:
        return int(t.item())
    return int(np.asarray(t).reshape(-1)[0])


@kernel("Loop", 1)
def loop(ins, at):
    body, outer = at["body"], at.get("__outer__")
    trip = ins[0]
    cond = ins[1] if len(ins) > 1 else None
    carried = ins[2:]
    n_c = len(carried)
    max_trip = _first_int(trip) if trip is not None else None
    go = _truth(cond) if cond is not None else True
    limit = math.inf if max_trip is None else max_trip
    first = 1 + n_c  # outs: cond, the carried values, then the scan outputs
    n_scan = len(body.output_names) - first
    run = body.runner(2 + n_c)
    counters = _counters(64 if max_trip is None else min(max_trip, 256))  # later ones: _counter
    n_cached = len(counters)
    scans = [[] for _ in range(n_scan)] if n_scan else ()
    scan0 = scans[0] if n_scan == 1 else None  # the common single scan output: one append
    i = 0
    while go and i < limit:
        outs = run([counters[i] if i < n_cached else _counter(i), _TRUE, *carried], outer)
        go = _truth(outs[0])
        carried = outs[1:first]
        if scan0 is not None:
            scan0.append(outs[first])
        elif n_scan:
            for j in range(n_scan):
                scans[j].append(outs[first + j])
        i += 1
    results = [_own(v) for v in carried]
    for j in range(n_scan):
        results.append(_stack(scans[j], _out_arg(body, first + j)))
    return results


def _scan(body, outer, state, xs, at):
    n_in = len(xs)
    in_axes = at.get("scan_input_axes")
    if in_axes and any(in_axes):  # np.moveaxis costs microseconds even with nothing to move
        xs = [np.moveaxis(x, ax % x.ndim, 0) if ax % x.ndim else x for x, ax in zip(xs, in_axes)]
    in_dirs = at.get("scan_input_directions")
    if in_dirs and any(in_dirs):
        xs = [x[::-1] if d else x for x, d in zip(xs, in_dirs)]
    steps = xs[0].shape[0] if xs else 0
    n_state = len(state)
    n_out = len(body.output_names) - n_state
    run = body.runner(n_state + n_in)
    accs = [[] for _ in range(n_out)]
    state = list(state)
    if n_in == 1 and n_out == 1:  # the usual shape, one sequence in and one out: the least per step
        acc = accs[0]
        for xt in xs[0]:
            res = run([*state, xt], outer)
            state = res[:n_state]
            acc.append(res[n_state])
    else:
        for t in range(steps):
            res = run(state + [x[t] for x in xs], outer)
            state = res[:n_state]
            for j in range(n_out):
                accs[j].append(res[n_state + j])
    out_axes = at.get("scan_output_axes")
    out_dirs = at.get("scan_output_directions")
    scans = []
    for j in range(n_out):
        acc = accs[j][::-1] if out_dirs and j < len(out_dirs) and out_dirs[j] else accs[j]
        y = _stack(acc, _out_arg(body, n_state + j))
        ax = out_axes[j] % y.ndim if out_axes and j < len(out_axes) else 0
        scans.append(np.moveaxis(y, 0, ax) if ax else y)
    return state, scans


@kernel("Scan", 9)
def scan(ins, at):
    m = at["num_scan_inputs"]
    state, xs = ins[:len(ins) - m], ins[len(ins) - m:]
    state, scans = _scan(at["body"], at.get("__outer__"), state, xs, at)
    return state + scans


@kernel("Scan", 8)
def scan_v8(ins, at):
    # opset 8: a leading batch axis on every state and scan input, plus optional sequence_lens: batch
    # entry b scans only its first lens[b] steps (reversed within them for direction 1), and its scan
    # outputs are zero past them, as ONNX Runtime pads them
    m = at["num_scan_inputs"]
    lens, rest = ins[0], ins[1:]
    state, xs = rest[:len(rest) - m], rest[len(rest) - m:]
    batch = (state or xs)[0].shape[0]
    steps = xs[0].shape[1] if xs else 0
    sub_at = {**at, "scan_input_axes": None, "scan_input_directions": at.get("directions")}
    per = []
    for b in range(batch):
        n = steps if lens is None else int(np.asarray(lens).reshape(-1)[b])
        if not 0 <= n <= steps:
            raise ValueError(f"sequence_lens[{b}] = {n} is outside [0, {steps}]")
        part = _scan(at["body"], at.get("__outer__"), [s[b] for s in state],
                     [x[b] if n == steps else x[b][:n] for x in xs], sub_at)
        if n != steps:
            part = part[0], [_pad_steps(y, steps) for y in part[1]]
        per.append(part)
    states = [np.stack([p[0][i] for p in per]) for i in range(len(state))]
    scans = [np.stack([p[1][i] for p in per]) for i in range(len(per[0][1]))] if per else []
    return states + scans


def _pad_steps(y, steps: int) -> np.ndarray:
    out = np.zeros((steps,) + y.shape[1:], y.dtype)
    out[:y.shape[0]] = y
    return out


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
    run = body.runner(len(ins))
    for i in range(n):
        args = [x[i] if isinstance(x, list) else x for x in ins]
        res = run(args, outer)
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

