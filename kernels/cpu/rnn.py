"""RNN, GRU, LSTM: the input projection for all time steps is one GEMM; the recurrence is a loop
over time steps (batched over the batch), with per-sequence lengths honoured by masking."""
from __future__ import annotations

import numpy as np

from ..registry import kernel


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
