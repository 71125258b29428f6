"""ai.onnx.ml LinearClassifier / LinearRegressor / SVMClassifier / SVMRegressor, as ONNX Runtime
computes them (ORT is the reference these kernels are tested against): scores in float32 through
one GEMM, then ORT's rules for two-class outputs (a single score becomes two columns), votes
between class pairs for SVMs without probabilities, and Platt scaling plus the pairwise
coupling iteration (Wu, Lin and Weng 2004, same stopping rule) for SVMs with probabilities.
Weights are laid out once per node by the prepare hooks.
"""
from __future__ import annotations

import numpy as np

from graphopt.errors import Unsupported

from ..registry import kernel_from_attributes
from ._util import clip_ufunc
from .ml_transforms import apply_post_transform, apply_post_transform_t, argmax_of_rows, logistic, probit

ML = "ai.onnx.ml"


def _as_matrix(x):
    """X as ORT feeds these ops: 2-D float32 (ints and doubles are converted to float)."""
    x = x.reshape(1, -1) if x.ndim == 1 else x.reshape(x.shape[0], -1)
    return x if x.dtype == np.float32 else x.astype(np.float32)


def _labels(at, ints="classlabels_ints"):
    strings = at.get("classlabels_strings")
    if strings:
        return np.array(strings, dtype=object), True
    return np.array(at.get(ints) or [], dtype=np.int64), False


def finish_scores(scores, post, second_class=None):
    """ORT's batched score update: transforms for rows of >= 2 scores; for one score per row only
    PROBIT, or the second column ORT adds (second_class 0/1: 1 - s, 2: -s, or logistic)."""
    if scores.shape[1] > 1:
        return apply_post_transform(scores, post)
    s = scores[:, 0]
    if post == "PROBIT":
        return probit(scores)
    if second_class is None:
        return scores
    out = np.empty((len(s), 2), s.dtype)
    out[:, 1] = s
    if second_class in (0, 1):
        np.subtract(1, s, out=out[:, 0])
    elif post == "LOGISTIC":  # logistic(-s), logistic(s)
        with np.errstate(over="ignore"):
            e = np.exp(-s)
        np.reciprocal(1 + e, out=out[:, 1])
        np.multiply(e, out[:, 1], out=out[:, 0])
    else:
        np.negative(s, out=out[:, 0])
    return out


# --- linear models ---------------------------------------------------------------------------

def make_linear_classifier(at):
    intercepts = np.asarray(at.get("intercepts") or [], np.float32)
    n_classes = len(intercepts)
    coef = np.asarray(at["coefficients"], np.float32)
    if n_classes == 0 or coef.size % n_classes:
        raise Unsupported("LinearClassifier: coefficients and intercepts do not agree")
    coef_t = np.ascontiguousarray(coef.reshape(n_classes, -1).T)
    labels, strings = _labels(at)
    post = at.get("post_transform") or "NONE"
    two_labels = len(labels) == 2
    if n_classes == 1:
        positive = labels[1] if two_labels else ("1" if strings else 1)
        negative = labels[0] if two_labels else ("0" if strings else 0)
        pair = np.array([negative, positive], dtype=labels.dtype)

    by_class = coef.reshape(n_classes, -1)
    intercepts_col = intercepts[:, None]

    def run(ins, _at=None):
        x = _as_matrix(ins[0])
        if n_classes == 1:
            scores = x @ coef_t + intercepts
            label = pair.take((scores[:, 0] > 0).view(np.int8))
            z = finish_scores(scores, post, 1 if two_labels else None)
            return label, z.astype(np.float32, copy=False)
        # scores laid out class by class, (k, n): the label and transform work along rows
        scores_t = by_class @ x.T
        scores_t += intercepts_col
        label = labels.take(argmax_of_rows(scores_t))
        z = apply_post_transform_t(scores_t, post)
        return label, np.ascontiguousarray(z.T)
    return run


def make_linear_regressor(at):
    coef = np.asarray(at["coefficients"], np.float32)
    targets = at.get("targets") or 1
    coef_t = np.ascontiguousarray(coef.reshape(targets, -1).T)
    intercepts = np.asarray(at.get("intercepts") or [0.0] * targets, np.float32)
    post = at.get("post_transform") or "NONE"

    def run(ins, _at=None):
        scores = _as_matrix(ins[0]) @ coef_t + intercepts
        if post == "NONE":
            return (scores,)
        return (finish_scores(scores, post).astype(np.float32, copy=False),)
    return run


# --- SVMs --------------------------------------------------------------------------------

def _kernel_fn(at, vectors):
    """fn(x (n, f)) -> (n, m) kernel values against the m `vectors`, float32 as ORT."""
    kind = at.get("kernel_type") or "LINEAR"
    params = list(at.get("kernel_params") or []) + [0.0, 0.0, 0.0]
    gamma, coef0, degree = np.float32(params[0]), np.float32(params[1]), np.float32(params[2])
    vt = np.ascontiguousarray(vectors.T)
    if kind == "LINEAR":
        return lambda x: x @ vt
    if kind == "POLY":
        return lambda x: np.power(gamma * (x @ vt) + coef0, degree)
    if kind == "SIGMOID":
        return lambda x: np.tanh(gamma * (x @ vt) + coef0)
    if kind == "RBF":
        vv = (vectors * vectors).sum(axis=1)
        minus_two_vt = -2 * vt

        def rbf(x):  # |x - v|^2 = |x|^2 - 2 x.v + |v|^2, through one GEMM
            d = x @ minus_two_vt
            d += vv
            d += (x * x).sum(axis=1, keepdims=True)
            np.maximum(d, 0, out=d)
            d *= -gamma
            return np.exp(d, out=d)
        return rbf
    raise Unsupported(f"SVM kernel_type {kind!r}")


def make_svm_regressor(at):
    coef = np.asarray(at["coefficients"], np.float32)
    rho = np.float32((at.get("rho") or [0.0])[0])
    n_sv = at.get("n_supports") or 0
    post = at.get("post_transform") or "NONE"
    one_class = at.get("one_class") or 0
    if n_sv > 0:
        vectors = np.asarray(at["support_vectors"], np.float32).reshape(n_sv, -1)
        dual = coef.reshape(-1)[:n_sv, None]
    else:
        if (at.get("kernel_type") or "LINEAR") != "LINEAR":
            raise Unsupported("SVMRegressor without support vectors needs kernel_type LINEAR")
        vectors = coef.reshape(1, -1)
        dual = np.ones((1, 1), np.float32)
    kern = _kernel_fn(at, vectors)

    def run(ins, _at=None):
        scores = kern(_as_matrix(ins[0])) @ dual
        scores += rho
        if one_class:
            scores = np.where(scores > 0, 1.0, -1.0)
        return (finish_scores(scores, post).astype(np.float32, copy=False),)
    return run


def make_svm_classifier(at):
    labels, strings = _labels(at)
    n_classes = len(labels)
    coef = np.asarray(at["coefficients"], np.float32).reshape(-1)
    rho = np.asarray(at.get("rho") or [0.0], np.float64)
    per_class = at.get("vectors_per_class") or []
    n_sv = int(sum(per_class))
    proba_a = np.asarray(at.get("prob_a") or [], np.float64)
    proba_b = np.asarray(at.get("prob_b") or [], np.float64)
    have_proba = len(proba_a) > 0
    post = at.get("post_transform") or "NONE"
    all_positive = bool((coef >= 0).all())
    pairs = [(i, j) for i in range(n_classes - 1) for j in range(i + 1, n_classes)]
    if n_classes < 2:
        raise Unsupported("SVMClassifier with fewer than two class labels")
    if n_sv > 0:
        if len(per_class) != n_classes or len(rho) < len(pairs) or (have_proba and len(proba_a) < len(pairs)):
            raise Unsupported("SVMClassifier: vectors_per_class / rho / prob_a sizes do not match the classes")
        vectors = np.asarray(at["support_vectors"], np.float32).reshape(n_sv, -1)
        starts = np.concatenate([[0], np.cumsum(per_class)]).astype(np.int64)
        dual = coef.reshape(n_classes - 1, n_sv).astype(np.float64)
        # pair (i, j): support vectors of i weighted by row j-1, those of j by row i, plus rho
        pair_weights = np.zeros((n_sv, len(pairs)))
        for p, (i, j) in enumerate(pairs):
            pair_weights[starts[i]:starts[i + 1], p] = dual[j - 1, starts[i]:starts[i + 1]]
            pair_weights[starts[j]:starts[j + 1], p] = dual[i, starts[j]:starts[j + 1]]
    else:
        if (at.get("kernel_type") or "LINEAR") != "LINEAR":
            raise Unsupported("SVMClassifier without support vectors needs kernel_type LINEAR")
        vectors = coef.reshape(n_classes, -1)
    kern = _kernel_fn(at, vectors)
    pair_weights = pair_weights.astype(np.float32) if n_sv > 0 else None
    pair_rho = rho[:len(pairs)].astype(np.float32)
    platt = (proba_a[:len(pairs)].astype(np.float32), proba_b[:len(pairs)].astype(np.float32),
             *np.array(pairs, np.int64).reshape(-1, 2).T)
    winner_i = np.array([i for i, _ in pairs], np.int64)
    winner_j = np.array([j for _, j in pairs], np.int64)

    def run(ins, _at=None):
        k = kern(_as_matrix(ins[0]))
        if n_sv == 0:  # liblinear layout: one score per class
            scores = k + np.float32(rho[0])
            top = scores.argmax(axis=1)
            label = _choose_binary(scores, top, False) if len(pairs) == 1 else labels[top]
            return label, finish_scores(scores, post).astype(np.float32, copy=False)
        pair_scores = k @ pair_weights
        pair_scores += pair_rho
        # the label is the class with most pairwise votes, with or without probabilities (as in ORT,
        # where it can differ from the most probable class)
        votes = np.zeros((len(pair_scores), n_classes), np.int64)
        winners = np.where(pair_scores > 0, winner_i, winner_j)
        for c in range(n_classes):
            votes[:, c] = (winners == c).sum(axis=1)
        label = labels[votes.argmax(axis=1)]
        if have_proba:
            probs = _pairwise_probabilities(pair_scores, platt, n_classes)
            return label, finish_scores(probs, post).astype(np.float32, copy=False)
        if n_classes == 2:
            z = finish_scores(pair_scores, post, 2 if post == "NONE" else 0)
            if post == "PROBIT":
                z = np.concatenate([z, np.zeros_like(z)], axis=1)  # ORT fills only the first column
            return label, z.astype(np.float32, copy=False)
        return label, finish_scores(pair_scores, post).astype(np.float32, copy=False)

    def _choose_binary(scores, top, _):
        best = scores[np.arange(len(scores)), top]
        pick_positive = (best >= 0.5) if all_positive else (best > 0)
        return np.where(pick_positive, labels[1], labels[top])
    return run


def _pairwise_probabilities(pair_scores, platt, k):
    """Platt-scaled pairwise probabilities coupled into class probabilities, as libsvm / ORT do.
    `platt`: (A, B, first, second), each pair's sigmoid parameters (float32) and its two classes."""
    a, b, first, second = platt
    v = pair_scores * a
    v += b
    prob = logistic(v)
    np.subtract(1, prob, out=prob)  # 1 - logistic(v)
    prob = clip_ufunc(prob, np.float32(1e-7), np.float32(1 - 1e-7))  # ORT: max(min(p, 1 - 1e-7), 1e-7)
    r = np.zeros((len(pair_scores), k, k), np.float32)
    r[:, first, second], r[:, second, first] = prob, 1 - prob
    if len(pair_scores) == 1:
        return np.array([_couple_one(r[0].tolist(), k)], np.float32)
    return _couple(r, k)


def _couple_one(r, k):
    """_couple for one row in Python floats: libsvm's loop costs ~50 NumPy calls an iteration
    vectorized, a few microseconds as scalar arithmetic. float64 where ORT uses float32: the
    results agree within 1e-5 (4e-6 on the 300 rows tests/unit/test_ml_kernels.py checks one by one)."""
    q = [[0.0] * k for _ in range(k)]
    for i in range(k):
        for j in range(k):
            if j != i:
                q[i][i] += r[j][i] * r[j][i]
                q[i][j] = -r[j][i] * r[i][j]
    p = [1.0 / k] * k
    eps = 0.005 / k
    for _ in range(100):
        qp = [sum([a * b for a, b in zip(row, p)]) for row in q]
        pqp = sum([a * b for a, b in zip(p, qp)])
        if max(abs(v - pqp) for v in qp) < eps:
            break
        for i in range(k):
            diff = (pqp - qp[i]) / q[i][i]
            p[i] += diff
            one_plus = 1 + diff
            pqp = (pqp + diff * (diff * q[i][i] + 2 * qp[i])) / one_plus / one_plus
            qi = q[i]
            qp = [(qp[j] + diff * qi[j]) / one_plus for j in range(k)]
            p = [v / one_plus for v in p]
    return p


def _couple(r, k):
    """Wu-Lin-Weng coupling in float32, vectorized over samples: every row takes libsvm's steps
    until its own stopping test passes, then keeps its values (rows still running are updated
    for all, and the finished ones put back)."""
    n = r.shape[0]
    f32 = np.float32
    q = -(r.transpose(0, 2, 1) * r)  # q[i, j] = -r[j, i] r[i, j]; q[i, i] = sum over j of r[j, i]^2
    q[:, np.arange(k), np.arange(k)] = np.square(r).sum(axis=1)
    diag = [np.ascontiguousarray(q[:, i, i]) for i in range(k)]
    rows = [np.ascontiguousarray(q[:, i, :]) for i in range(k)]
    p = np.full((n, k), f32(1.0 / k), f32)
    eps = f32(0.005 / k)
    active = np.ones(n, bool)
    for _ in range(100):
        qp = np.matmul(q, p[:, :, None])[:, :, 0]
        pqp = (p * qp).sum(axis=1)
        active &= np.abs(qp - pqp[:, None]).max(axis=1) >= eps
        if not active.any():
            break
        p_before = p.copy()
        for i in range(k):
            diff = (pqp - qp[:, i]) / diag[i]
            p[:, i] += diff
            one_plus = 1 + diff
            pqp = (pqp + diff * (diff * diag[i] + 2 * qp[:, i])) / one_plus / one_plus
            qp += diff[:, None] * rows[i]
            qp /= one_plus[:, None]
            p /= one_plus[:, None]
        if not active.all():
            p = np.where(active[:, None], p, p_before)
    return p


kernel_from_attributes("LinearClassifier", make_linear_classifier, domain=ML)
kernel_from_attributes("LinearRegressor", make_linear_regressor, domain=ML)
kernel_from_attributes("SVMClassifier", make_svm_classifier, domain=ML)
kernel_from_attributes("SVMRegressor", make_svm_regressor, domain=ML)
