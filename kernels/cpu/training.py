"""ai.onnx.preview.training optimizers and the random generators (RandomUniform/Normal[Like],
Bernoulli, Multinomial). Random ops use NumPy's generator: seeded runs repeat, but the numbers
are not those of other runtimes."""
from __future__ import annotations

import numpy as np

from ..registry import kernel
from ._util import ints, np_dtype

_TRAINING = "ai.onnx.preview.training"


def _groups(ins, k):
    tensors = ins[2:]
    n = len(tensors) // k
    return [tensors[i * n:(i + 1) * n] for i in range(k)]


@kernel("Adagrad", 1, domain=_TRAINING)
def adagrad(ins, at):
    r, t = float(ins[0]), float(ins[1])
    xs, gs, hs = _groups(ins, 3)
    rate = r / (1 + t * at["decay_factor"])
    new_x, new_h = [], []
    for x, g, h in zip(xs, gs, hs):
        g = at["norm_coefficient"] * x + g
        h2 = h + g * g
        new_x.append((x - rate * g / (np.sqrt(h2) + at["epsilon"])).astype(x.dtype))
        new_h.append(h2.astype(h.dtype))
    return new_x + new_h


@kernel("Momentum", 1, domain=_TRAINING)
def momentum(ins, at):
    r, t = float(ins[0]), float(ins[1])
    xs, gs, vs = _groups(ins, 3)
    alpha, beta = at["alpha"], at["beta"] if t > 0 else 1.0
    new_x, new_v = [], []
    for x, g, v in zip(xs, gs, vs):
        g = at["norm_coefficient"] * x + g
        v2 = alpha * v + beta * g
        step = g + alpha * v2 if at["mode"] == "nesterov" else v2
        new_x.append((x - r * step).astype(x.dtype))
        new_v.append(v2.astype(v.dtype))
    return new_x + new_v


@kernel("Adam", 1, domain=_TRAINING)
def adam(ins, at):
    r, t = float(ins[0]), float(ins[1])
    xs, gs, vs, hs = _groups(ins, 4)
    alpha, beta, eps = at["alpha"], at["beta"], at["epsilon"]
    rate = r * np.sqrt(1 - beta ** t) / (1 - alpha ** t) if t > 0 else r
    new_x, new_v, new_h = [], [], []
    for x, g, v, h in zip(xs, gs, vs, hs):
        g = at["norm_coefficient"] * x + g
        v2 = alpha * v + (1 - alpha) * g
        h2 = beta * h + (1 - beta) * g * g
        x2 = (1 - at["norm_coefficient_post"]) * (x - rate * v2 / (np.sqrt(h2) + eps))
        new_x.append(x2.astype(x.dtype))
        new_v.append(v2.astype(v.dtype))
        new_h.append(h2.astype(h.dtype))
    return new_x + new_v + new_h


def _rng(at):
    seed = at.get("seed")
    return np.random.default_rng(None if seed is None else int(np.float32(seed).view(np.uint32)))


def _dtype(at, like=None, default=1):
    if at.get("dtype") is not None:
        return np_dtype(at["dtype"])
    return like.dtype if like is not None else np_dtype(default)


@kernel("RandomUniform", 1)
def random_uniform(ins, at):
    y = _rng(at).uniform(at["low"], at["high"], ints(at["shape"]))
    return (y.astype(_dtype(at)),)


@kernel("RandomNormal", 1)
def random_normal(ins, at):
    y = _rng(at).normal(at["mean"], at["scale"], ints(at["shape"]))
    return (y.astype(_dtype(at)),)


@kernel("RandomUniformLike", 1)
def random_uniform_like(ins, at):
    return (_rng(at).uniform(at["low"], at["high"], ins[0].shape).astype(_dtype(at, ins[0])),)


@kernel("RandomNormalLike", 1)
def random_normal_like(ins, at):
    return (_rng(at).normal(at["mean"], at["scale"], ins[0].shape).astype(_dtype(at, ins[0])),)


@kernel("Bernoulli", 15)
def bernoulli(ins, at):
    p = ins[0]
    return ((_rng(at).uniform(size=p.shape) < p).astype(_dtype(at, p)),)


@kernel("Multinomial", 7)
def multinomial(ins, at):
    logits = ins[0].astype(np.float64)
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    rng = _rng(at)
    n = at["sample_size"]
    out = np.stack([rng.choice(probs.shape[1], size=n, p=row) for row in probs])
    return (out.astype(np_dtype(at.get("dtype") or 6)),)
