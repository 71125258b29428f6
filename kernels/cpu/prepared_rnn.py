"""Build-time specialization of LSTM and GRU with constant weights, in their common form.

The generic kernels (rnn.py) handle every option (sequence lengths, peepholes, clipping, coupled
input-forget gate, any activation) with masks (np.where) at every time step, about 30 NumPy calls
a step. A model exported from PyTorch's nn.LSTM / nn.GRU uses none of those options: here the
weights are transposed once, the biases that can be are summed once into the input projection
(one GEMM for all steps), and a step is the recurrent GEMM, one sigmoid over the gates together
and the state update written in place (about 12 calls). Anything else, including sequence_lens
that are not all the full length, runs the generic kernel.
"""
from __future__ import annotations

import numpy as np

from ..registry import DYNAMIC, prepare
from ._util import sigmoid_in_place

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def _common_form(at, consts, n_gates, default_acts, options_in_use):
    """(W, R, B or None, directions, hidden) when the node is in the form prepared here, else None."""
    w, r = consts[1], consts[2]
    b = consts[3] if len(consts) > 3 else None
    if not isinstance(w, np.ndarray) or not isinstance(r, np.ndarray) or w.dtype not in _FLOATS \
            or r.dtype != w.dtype or b is DYNAMIC or (b is not None and b.dtype != w.dtype) \
            or at.get("clip") is not None or options_in_use:
        return None
    dirs, hidden = w.shape[0], r.shape[-1]
    acts = [a.lower() for a in at.get("activations") or default_acts * dirs]
    direction = at.get("direction") or "forward"
    if acts != default_acts * dirs or (at.get("hidden_size") or hidden) != hidden \
            or r.shape[1] != n_gates * hidden or (direction == "bidirectional") != (dirs == 2):
        return None  # other activations, or a malformed node: the generic kernel (and its error)
    return w, r, b, dirs, hidden


def _reverse(at, d):
    direction = at.get("direction") or "forward"
    return direction == "reverse" or (direction == "bidirectional" and d == 1)


def _runner(at, generic, dtype, hidden, dirs, directions, n_states):
    """The kernel: layout, sequence_lens check, initial states, outputs (Y, Y_h[, Y_c]).
    directions[d](x, states, out) runs direction d over all steps, writing out[t] = h_t and
    returning the final states."""
    layout = at.get("layout") or 0

    def run(args, at):
        x = args[0]
        lens = args[4] if len(args) > 4 else None
        init = [args[5 + i] if len(args) > 5 + i else None for i in range(n_states)]
        if x.dtype != dtype or x.ndim != 3:
            return generic(args, at)
        if layout:
            x = x.transpose(1, 0, 2)
            init = [None if s is None else s.transpose(1, 0, 2) for s in init]
        seq, batch = x.shape[:2]
        if lens is not None and not (lens == seq).all():  # ragged batch: the generic kernel masks
            return generic(args, at)
        y = np.empty((seq, dirs, batch, hidden), dtype)
        finals = [np.empty((dirs, batch, hidden), dtype) for _ in range(n_states)]
        for d in range(dirs):
            states = [np.zeros((batch, hidden), dtype) if s is None else s[d].copy() for s in init]
            for final, state in zip(finals, directions[d](x, states, y[:, d])):
                final[d] = state
        if layout:
            return (y.transpose(2, 0, 1, 3),) + tuple(f.transpose(1, 0, 2) for f in finals)
        return (y,) + tuple(finals)
    return run


def _projection(x, w_t, bias):
    """x W^T + bias for every step at once: (seq, batch, gates * hidden)."""
    seq, batch, _ = x.shape
    xw = x.reshape(seq * batch, -1).dot(w_t).reshape(seq, batch, -1)
    xw += bias
    return xw


def _steps(seq, reverse):
    return range(seq - 1, -1, -1) if reverse else range(seq)


# --- LSTM -----------------------------------------------------------------------------------------
@prepare("LSTM", 7)
def prepare_lstm(at, consts, generic):
    peephole = consts[7] if len(consts) > 7 else None
    form = _common_form(at, consts, 4, ["sigmoid", "tanh", "tanh"],
                        peephole is not None or at.get("input_forget"))
    if form is None:
        return None
    w, r, b, dirs, hidden = form

    def direction(d):
        w_t, r_t = np.ascontiguousarray(w[d].T), np.ascontiguousarray(r[d].T)
        bias = b[d, :4 * hidden] + b[d, 4 * hidden:] if b is not None else np.zeros(4 * hidden, w.dtype)
        def recurrent(h, gates):  # h R^T, into the step's gate buffer
            return np.dot(h, r_t, out=gates)
        return lambda x, states, out: lstm_steps(_projection(x, w_t, bias), recurrent, *states, out, _reverse(at, d))
    return _runner(at, generic, w.dtype, hidden, dirs, [direction(d) for d in range(dirs)], 2)


def lstm_steps(xw, recurrent, h, c, out, reverse):
    """One direction over all steps, given the input projection xw (seq, batch, 4H, biases included)
    and recurrent(h, gates) -> h R^T (written into `gates` or a new array); gates in ONNX order i, o,
    f, c. out[t] = h_t; returns the last (h, c), c updated in place."""
    hidden = c.shape[1]
    gates = np.empty((xw.shape[1], 4 * hidden), xw.dtype)
    ig = np.empty((xw.shape[1], hidden), xw.dtype)
    for t in _steps(xw.shape[0], reverse):
        gates = recurrent(h, gates)
        gates += xw[t]
        sigmoid_in_place(gates[:, :3 * hidden])     # i, o, f together
        cand = np.tanh(gates[:, 3 * hidden:], out=gates[:, 3 * hidden:])
        c *= gates[:, 2 * hidden:3 * hidden]        # f * c
        np.multiply(gates[:, :hidden], cand, out=ig)  # i * g
        c += ig
        h = np.tanh(c, out=out[t])
        h *= gates[:, hidden:2 * hidden]            # o * tanh(c), written as step t's output
    return h, c


# --- GRU ------------------------------------------------------------------------------------------
@prepare("GRU", 7)
def prepare_gru(at, consts, generic):
    form = _common_form(at, consts, 3, ["sigmoid", "tanh"], False)
    if form is None:
        return None
    w, r, b, dirs, hidden = form
    before_reset = bool(at.get("linear_before_reset"))

    def direction(d):
        w_t, r_t = np.ascontiguousarray(w[d].T), np.ascontiguousarray(r[d].T)
        wb = b[d, :3 * hidden] if b is not None else np.zeros(3 * hidden, w.dtype)
        rb = b[d, 3 * hidden:] if b is not None else np.zeros(3 * hidden, w.dtype)
        # the recurrent biases of z and r add like the input ones; h's does too unless it is
        # multiplied by r (linear_before_reset), then it stays in the step
        xbias = wb + np.concatenate([rb[:2 * hidden], np.zeros(hidden, w.dtype) if before_reset else rb[2 * hidden:]])
        step = (r_t, rb[2 * hidden:]) if before_reset else \
            (np.ascontiguousarray(r_t[:, :2 * hidden]), np.ascontiguousarray(r_t[:, 2 * hidden:]))
        return lambda x, states, out: (_gru(x, w_t, xbias, step, before_reset, states[0], out, _reverse(at, d)),)
    return _runner(at, generic, w.dtype, hidden, dirs, [direction(d) for d in range(dirs)], 1)


def _gru(x, w_t, xbias, step, before_reset, h, out, reverse):
    """One direction; gates in ONNX order z, r, h. h_t = hh + z * (h_{t-1} - hh)."""
    hidden = h.shape[1]
    xw = _projection(x, w_t, xbias)
    for t in _steps(x.shape[0], reverse):
        if before_reset:  # hh = tanh(x Wh^T + r * (h Rh^T + Rbh))
            r_t, rb_h = step
            hr = h.dot(r_t)
            hh = hr[:, 2 * hidden:]
            hh += rb_h
            zr = hr[:, :2 * hidden]
            zr += xw[t][:, :2 * hidden]
            sigmoid_in_place(zr)
            hh *= zr[:, hidden:]
        else:  # hh = tanh(x Wh^T + (r * h) Rh^T + Rbh)
            r_zr, r_h = step
            zr = h.dot(r_zr)
            zr += xw[t][:, :2 * hidden]
            sigmoid_in_place(zr)
            hh = np.multiply(zr[:, hidden:], h).dot(r_h)
        hh += xw[t][:, 2 * hidden:]
        np.tanh(hh, out=hh)
        new = np.subtract(h, hh, out=out[t])
        new *= zr[:, :hidden]
        new += hh
        h = new
    return h
