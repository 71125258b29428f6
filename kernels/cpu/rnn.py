"""RNN, GRU, LSTM: the input projection for all time steps is one GEMM; the recurrence is a loop
over time steps (batched over the batch), with per-sequence lengths honoured by masking. Below the
generic kernels, their build-time specializations for constant weights (prepare hooks)."""
from __future__ import annotations

import numpy as np

from ..registry import DYNAMIC, kernel, prepare
from ._util import sigmoid_in_place


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _activation(name, alpha, beta):
    n = name.lower()
    table = {
        "relu": lambda x: np.maximum(x, 0),
        "tanh": np.tanh,
        "sigmoid": _sigmoid,
        "affine": lambda x: alpha * x + beta,
        "leakyrelu": lambda x: np.where(x >= 0, x, alpha * x),
        "thresholdedrelu": lambda x: np.where(x > alpha, x, 0),
        "scaledtanh": lambda x: alpha * np.tanh(beta * x),
        "hardsigmoid": lambda x: np.clip(alpha * x + beta, 0, 1),
        "elu": lambda x: np.where(x >= 0, x, alpha * np.expm1(np.minimum(x, 0))),
        "softsign": lambda x: x / (1 + np.abs(x)),
        "softplus": lambda x: np.logaddexp(0, x),
    }
    return table[n]


_DEFAULT_ALPHA = {"leakyrelu": 0.01, "thresholdedrelu": 1.0, "hardsigmoid": 0.2, "elu": 1.0, "affine": 1.0,
                  "scaledtanh": 1.0}
_DEFAULT_BETA = {"hardsigmoid": 0.5, "affine": 0.0, "scaledtanh": 1.0}


def _activations(at, defaults, n_dirs):
    names = at.get("activations") or defaults * n_dirs
    alphas = list(at.get("activation_alpha") or [])
    betas = list(at.get("activation_beta") or [])
    fns = []
    for i, name in enumerate(names):
        a = alphas[i] if i < len(alphas) else _DEFAULT_ALPHA.get(name.lower(), 0.0)
        b = betas[i] if i < len(betas) else _DEFAULT_BETA.get(name.lower(), 0.0)
        fns.append(_activation(name, a, b))
    per = len(defaults)
    return [fns[d * per:(d + 1) * per] for d in range(n_dirs)]


def _run(ins, at, n_gates, defaults, cell):
    """Shared driver: layout, directions, biases, sequence lengths; `cell` does one time step."""
    x, w, r = ins[0], ins[1], ins[2]
    get = lambda i: ins[i] if len(ins) > i else None  # noqa: E731
    b, seq_lens, h0 = get(3), get(4), get(5)
    layout = at.get("layout") or 0
    if layout:
        x = x.transpose(1, 0, 2)
        h0 = h0.transpose(1, 0, 2) if h0 is not None else None
    seq, batch, _ = x.shape
    hidden = at["hidden_size"] or r.shape[-1]
    n_dirs = w.shape[0]
    direction = at.get("direction") or "forward"
    acts = _activations(at, defaults, n_dirs)
    lens = np.full(batch, seq, np.int64) if seq_lens is None else np.asarray(seq_lens, np.int64)
    clip = at.get("clip")
    ys = np.zeros((seq, n_dirs, batch, hidden), x.dtype)
    last_h = np.zeros((n_dirs, batch, hidden), x.dtype)
    extra_states = []
    for d in range(n_dirs):
        reverse = direction == "reverse" or (direction == "bidirectional" and d == 1)
        bias = b[d] if b is not None else np.zeros(2 * n_gates * hidden, x.dtype)
        wb, rb = bias[:n_gates * hidden], bias[n_gates * hidden:]
        xs = x
        if reverse:  # reverse each sequence within its own length
            t_idx = np.arange(seq)[:, None]
            src = np.where(t_idx < lens[None, :], lens[None, :] - 1 - t_idx, t_idx)
            xs = x[src, np.arange(batch)[None, :]]
        xw = xs @ w[d].T + wb  # (seq, batch, gates*hidden): the input projection for every step at once
        h = h0[d] if h0 is not None else np.zeros((batch, hidden), x.dtype)
        state = cell.init(d, batch, hidden, x.dtype, ins, layout)
        out = np.zeros((seq, batch, hidden), x.dtype)
        for t in range(seq):
            live = (t < lens)[:, None]
            h_new, state_new = cell.step(xw[t], h, state, r[d], rb, acts[d], clip, hidden, d)
            h = np.where(live, h_new, h)
            state = state_new if state is None else np.where(live, state_new, state)
            out[t] = np.where(live, h_new, 0)
        if reverse:
            t_idx = np.arange(seq)[:, None]
            src = np.where(t_idx < lens[None, :], lens[None, :] - 1 - t_idx, t_idx)
            out = out[src, np.arange(batch)[None, :]]
            out = np.where((t_idx < lens[None, :])[..., None], out, 0)
        ys[:, d] = out
        last_h[d] = h
        extra_states.append(state)
    outputs = [ys, last_h] + ([np.stack(extra_states)] if cell.has_cell_state else [])
    if layout:
        outputs = [ys.transpose(2, 0, 1, 3)] + [o.transpose(1, 0, 2) for o in outputs[1:]]
    return tuple(o.astype(x.dtype, copy=False) for o in outputs)


def _clip(v, clip):
    return np.clip(v, -clip, clip) if clip is not None else v


class _RNNCell:
    has_cell_state = False

    def init(self, d, batch, hidden, dtype, ins, layout):
        return None

    def step(self, xw, h, state, r, rb, acts, clip, hidden, d):
        return acts[0](_clip(xw + h @ r.T + rb, clip)), None


class _GRUCell:
    has_cell_state = False

    def __init__(self, linear_before_reset):
        self.lbr = linear_before_reset

    def init(self, d, batch, hidden, dtype, ins, layout):
        return None

    def step(self, xw, h, state, r, rb, acts, clip, hidden, d):
        f, g = acts
        H = hidden
        rz, rr, rh = r[:H], r[H:2 * H], r[2 * H:]
        z = f(_clip(xw[:, :H] + h @ rz.T + rb[:H], clip))
        rt = f(_clip(xw[:, H:2 * H] + h @ rr.T + rb[H:2 * H], clip))
        if self.lbr:
            hh = g(_clip(xw[:, 2 * H:] + rt * (h @ rh.T + rb[2 * H:]), clip))
        else:
            hh = g(_clip(xw[:, 2 * H:] + (rt * h) @ rh.T + rb[2 * H:], clip))
        return (1 - z) * hh + z * h, None


class _LSTMCell:
    has_cell_state = True

    def __init__(self, input_forget):
        self.input_forget = input_forget

    def init(self, d, batch, hidden, dtype, ins, layout):
        c0 = ins[6] if len(ins) > 6 else None
        p = ins[7] if len(ins) > 7 else None
        self.p = p[d] if p is not None else None
        if c0 is None:
            return np.zeros((batch, hidden), dtype)
        return (c0.transpose(1, 0, 2) if layout else c0)[d]

    def step(self, xw, h, c, r, rb, acts, clip, hidden, d):
        f, g, hf = acts
        H = hidden
        gates = xw + h @ r.T + rb
        gi, go, gf, gc = gates[:, :H], gates[:, H:2 * H], gates[:, 2 * H:3 * H], gates[:, 3 * H:]
        if self.p is not None:
            pi, po, pf = self.p[:H], self.p[H:2 * H], self.p[2 * H:]
            gi, gf = gi + pi * c, gf + pf * c
        i = f(_clip(gi, clip))
        ft = 1 - i if self.input_forget else f(_clip(gf, clip))
        c_new = ft * c + i * g(_clip(gc, clip))
        if self.p is not None:
            go = go + po * c_new
        o = f(_clip(go, clip))
        return o * hf(c_new), c_new


@kernel("RNN", 1)
def rnn(ins, at):
    return _run(ins, at, 1, ["Tanh"], _RNNCell())


@kernel("GRU", 1)
def gru(ins, at):
    return _run(ins, at, 3, ["Sigmoid", "Tanh"], _GRUCell(at.get("linear_before_reset") or 0))


@kernel("LSTM", 1)
def lstm(ins, at):
    return _run(ins, at, 4, ["Sigmoid", "Tanh", "Tanh"], _LSTMCell(at.get("input_forget") or 0))


# ------------------------------------------------------------ Build-time specialization of LSTM and GRU with constant weights, in their common form.
#
# The generic kernels (rnn.py) handle every option (sequence lengths, peepholes, clipping, coupled
# input-forget gate, any activation) with masks (np.where) at every time step, about 30 NumPy calls
# a step. A model exported from PyTorch's nn.LSTM / nn.GRU uses none of those options: here the
# weights are transposed once, the biases that can be are summed once into the input projection
# (one GEMM for all steps), and a step is the recurrent GEMM, one sigmoid over the gates together
# and the state update written in place (about 12 calls). Anything else, including sequence_lens
# that are not all the full length, runs the generic kernel.

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


def reverse_time(at, d):
    direction = at.get("direction") or "forward"
    return direction == "reverse" or (direction == "bidirectional" and d == 1)


def rnn_runner(at, generic, dtype, hidden, dirs, directions, n_states):
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
        return lambda x, states, out: lstm_steps(_projection(x, w_t, bias), recurrent, *states, out, reverse_time(at, d))
    return rnn_runner(at, generic, w.dtype, hidden, dirs, [direction(d) for d in range(dirs)], 2)


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
        return lambda x, states, out: (_gru(x, w_t, xbias, step, before_reset, states[0], out, reverse_time(at, d)),)
    return rnn_runner(at, generic, w.dtype, hidden, dirs, [direction(d) for d in range(dirs)], 1)


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
