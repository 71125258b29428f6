"""Build-time specialization of LSTM with constant weights, in its common form.

The generic kernel (rnn.py) handles every option (sequence lengths, peepholes, clipping, coupled
input-forget gate, any activation) with masks (np.where) at every time step, about 30 NumPy calls
a step. A model exported from PyTorch's nn.LSTM uses none of those options: here the weights are
transposed once, both biases summed once, the input projection of all steps is one GEMM, and a
step is the recurrent GEMM, one sigmoid over the i/o/f gates together and the cell update written
in place (about 12 calls). Anything else, including sequence_lens that are not all the full
length, runs the generic kernel.
"""
from __future__ import annotations

import numpy as np

from ..registry import DYNAMIC, prepare
from ._util import sigmoid_in_place

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))
_DEFAULT_ACTS = ["sigmoid", "tanh", "tanh"]


@prepare("LSTM", 7)
def prepare_lstm(at, consts, generic):
    w, r = consts[1], consts[2]
    b = consts[3] if len(consts) > 3 else None
    peephole = consts[7] if len(consts) > 7 else None
    if not isinstance(w, np.ndarray) or not isinstance(r, np.ndarray) or w.dtype not in _FLOATS \
            or r.dtype != w.dtype or b is DYNAMIC or (b is not None and b.dtype != w.dtype) \
            or peephole is not None or at.get("clip") is not None or at.get("input_forget"):
        return None
    dirs, four_h = w.shape[0], r.shape[1]
    hidden = four_h // 4
    acts = [a.lower() for a in at.get("activations") or _DEFAULT_ACTS * dirs]
    if acts != _DEFAULT_ACTS * dirs or (at.get("hidden_size") or hidden) != hidden:
        return None
    direction = at.get("direction") or "forward"
    if (direction == "bidirectional") != (dirs == 2):
        return None  # the generic kernel's business (and its error)
    reverse = [direction == "reverse" or (direction == "bidirectional" and d == 1) for d in range(dirs)]
    w_t = [np.ascontiguousarray(w[d].T) for d in range(dirs)]  # (input, 4H)
    r_t = [np.ascontiguousarray(r[d].T) for d in range(dirs)]  # (H, 4H)
    bias = [(b[d, :four_h] + b[d, four_h:]) if b is not None else np.zeros(four_h, w.dtype) for d in range(dirs)]
    layout = at.get("layout") or 0

    def lstm(args, at):
        x = args[0]
        lens = args[4] if len(args) > 4 else None
        h0 = args[5] if len(args) > 5 else None
        c0 = args[6] if len(args) > 6 else None
        if x.dtype != w.dtype or x.ndim != 3:
            return generic(args, at)
        if layout:
            x = x.transpose(1, 0, 2)
            h0 = None if h0 is None else h0.transpose(1, 0, 2)
            c0 = None if c0 is None else c0.transpose(1, 0, 2)
        seq, batch = x.shape[:2]
        if lens is not None and not (lens == seq).all():  # ragged batch: the generic kernel masks
            return generic(args, at)
        y = np.empty((seq, dirs, batch, hidden), x.dtype)
        y_h = np.empty((dirs, batch, hidden), x.dtype)
        y_c = np.empty((dirs, batch, hidden), x.dtype)
        for d in range(dirs):
            h = np.zeros((batch, hidden), x.dtype) if h0 is None else h0[d]
            c = np.zeros((batch, hidden), x.dtype) if c0 is None else c0[d].copy()
            h, c = _run_direction(x, w_t[d], r_t[d], bias[d], h, c, y[:, d], reverse[d])
            y_h[d], y_c[d] = h, c
        if layout:
            return y.transpose(2, 0, 1, 3), y_h.transpose(1, 0, 2), y_c.transpose(1, 0, 2)
        return y, y_h, y_c
    return lstm


def _run_direction(x, w_t, r_t, bias, h, c, out, reverse):
    """One direction over all steps: out[t] = h_t; returns the last (h, c). c is updated in place."""
    seq, batch, _ = x.shape
    hidden = r_t.shape[0]
    xw = x.reshape(seq * batch, -1).dot(w_t).reshape(seq, batch, 4 * hidden)
    xw += bias
    gates = np.empty((batch, 4 * hidden), x.dtype)
    ig = np.empty((batch, hidden), x.dtype)
    for t in (range(seq - 1, -1, -1) if reverse else range(seq)):
        np.dot(h, r_t, out=gates)
        gates += xw[t]
        sigmoid_in_place(gates[:, :3 * hidden])  # i, o, f (ONNX gate order i, o, f, c)
        cand = np.tanh(gates[:, 3 * hidden:], out=gates[:, 3 * hidden:])
        c *= gates[:, 2 * hidden:3 * hidden]        # f * c
        np.multiply(gates[:, :hidden], cand, out=ig)  # i * g
        c += ig
        h = np.tanh(c, out=out[t])
        h *= gates[:, hidden:2 * hidden]            # o * tanh(c), written as step t's output
    return h, c
