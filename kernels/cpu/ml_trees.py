"""ai.onnx.ml tree ensembles: TreeEnsembleClassifier / TreeEnsembleRegressor (ml opsets 1 and 3) and
TreeEnsemble (ml opset 5), run the way ONNX Runtime runs them.

The attributes are turned into a Forest (kernels/cpu/ml_forest.py: every tree in flat node arrays,
all samples and trees walked together, leaf weights as a dense (node, target) matrix).

Score finishing (base values, the binary-classifier special cases, post transforms) mirrors
ONNX Runtime's tree aggregators, ORT being the reference these kernels are tested against.
The structure is built once per node by the prepare hooks (attributes are constants).
"""
from __future__ import annotations

import numpy as np

from graphopt.errors import Unsupported

from ..registry import kernel_from_attributes
from .ml_forest import Forest
from ._util import clip_ufunc
from .ml_transforms import apply_post_transform, argmax_of_columns, probit

ML = "ai.onnx.ml"
MODES = {"BRANCH_LEQ": 0, "BRANCH_LT": 1, "BRANCH_GTE": 2, "BRANCH_GT": 3, "BRANCH_EQ": 4, "BRANCH_NEQ": 5,
         "LEAF": 7, "BRANCH_MEMBER": 6}
AGGREGATES = {"AVERAGE": 0, "SUM": 1, "MIN": 2, "MAX": 3}
POST = ["NONE", "SOFTMAX", "LOGISTIC", "SOFTMAX_ZERO", "PROBIT"]
# TreeEnsemble-5's integer post_transform codes as ONNX Runtime reads them (1.32, measured): 1 is
# LOGISTIC and 2 SOFTMAX, the reverse of the ONNX spec's 'SOFTMAX' (1), 'LOGISTIC' (2). graphopt
# returns what ORT returns; a model written by the spec's numbering gets ORT's reading here too.
POST_V5_AS_ORT = ["NONE", "LOGISTIC", "SOFTMAX", "SOFTMAX_ZERO", "PROBIT"]


def _attr(at, name, as_tensor=None):
    """The `name` attribute (or its double `_as_tensor` twin) as an array, or None."""
    for key in ((as_tensor,) if as_tensor else ()) + (name,):
        v = at.get(key)
        if v is not None and len(np.atleast_1d(v)):
            return np.asarray(v).reshape(-1)
    return None


def forest_v3(at, prefix: str, n_targets: int, aggregate: int) -> Forest:
    """A Forest from the nodes_* and (class_|target_)* attributes of the older ops."""
    tree_ids, node_ids = _attr(at, "nodes_treeids"), _attr(at, "nodes_nodeids")
    if tree_ids is None:
        raise Unsupported("tree ensemble without nodes")
    tree_ids, node_ids = tree_ids.astype(np.int64), node_ids.astype(np.int64)
    index = {(t, i): k for k, (t, i) in enumerate(zip(tree_ids.tolist(), node_ids.tolist()))}
    modes = [MODES.get(m, -1) for m in at["nodes_modes"]]
    if -1 in modes or 6 in modes:
        raise Unsupported(f"tree ensemble: unknown node mode in {sorted(set(at['nodes_modes']))}")
    mode = np.array(modes, np.int64)
    threshold = _attr(at, "nodes_values", "nodes_values_as_tensor")
    threshold = np.zeros(len(mode), np.float32) if threshold is None else threshold
    n = len(mode)
    true_next, false_next = np.arange(n), np.arange(n)
    true_ids, false_ids = _attr(at, "nodes_truenodeids"), _attr(at, "nodes_falsenodeids")
    for k in np.nonzero(mode != 7)[0].tolist():
        t = tree_ids[k]
        try:
            true_next[k], false_next[k] = index[t, int(true_ids[k])], index[t, int(false_ids[k])]
        except KeyError as e:
            raise Unsupported(f"tree ensemble: tree {t} node {node_ids[k]} points to a missing node {e}") from e
    feature = np.where(mode == 7, 0, _attr(at, "nodes_featureids").astype(np.int64))
    missing = _attr(at, "nodes_missing_value_tracks_true")
    missing = np.zeros(n, bool) if missing is None else missing.astype(bool)
    # roots: nodes no other node of their tree points to
    pointed = np.zeros(n, bool)
    pointed[true_next[mode != 7]] = True
    pointed[false_next[mode != 7]] = True
    roots = np.nonzero(~pointed)[0]
    w_tree, w_node = _attr(at, f"{prefix}_treeids"), _attr(at, f"{prefix}_nodeids")
    w_ids = _attr(at, f"{prefix}_ids")
    w_val = _attr(at, f"{prefix}_weights", f"{prefix}_weights_as_tensor")
    weights = np.zeros((n, n_targets), np.float32 if w_val is None else w_val.dtype)
    has = np.zeros((n, n_targets), bool)
    if w_tree is not None:
        for t, i, c, v in zip(w_tree.tolist(), w_node.tolist(), w_ids.tolist(), w_val.tolist()):
            k = index.get((int(t), int(i)))
            if k is None or not 0 <= c < n_targets:
                raise Unsupported(f"tree ensemble: weight for tree {t} node {i} target {c} matches no leaf")
            if has[k, c] and aggregate in (2, 3):
                v = min(v, weights[k, c]) if aggregate == 2 else max(v, weights[k, c])
            elif has[k, c]:
                v += weights[k, c]
            weights[k, c], has[k, c] = v, True
    return Forest(feature, threshold, mode, true_next, false_next, missing, roots, weights, has)


def _features(x, threshold_dtype):
    """X as comparisons need it: 2-D, ints converted to the threshold type (C++'s int -> float)."""
    x = x.reshape(1, -1) if x.ndim == 1 else x.reshape(x.shape[0], -1)
    return x if x.dtype.kind == "f" else x.astype(threshold_dtype)


def _base(at, n):
    base = _attr(at, "base_values", "base_values_as_tensor")
    return np.zeros(0) if base is None else base


def make_regressor(at):
    n_targets = at.get("n_targets") or 1
    agg = AGGREGATES.get(at.get("aggregate_function") or "SUM")
    post = at.get("post_transform") or "NONE"
    if agg is None or post not in POST:
        raise Unsupported(f"TreeEnsembleRegressor: aggregate_function {at.get('aggregate_function')!r} / "
                          f"post_transform {post!r}")
    forest = forest_v3(at, "target", n_targets, agg)
    base = _base(at, n_targets)

    def run(ins, _at=None):
        x = _features(ins[0], forest.threshold.dtype)
        scores, has = forest.aggregate(forest.leaves(x), agg)
        scores = finish_regression(scores, has, base, n_targets, post)
        return (scores.astype(np.float32, copy=False),)
    run.forest = forest  # for tests and benchmarks
    return run


def finish_regression(scores, has, base, n_targets, post):
    """Base values and post transform as ORT applies them: with one target ORT applies PROBIT only;
    with several, a target no leaf scored stays 0 (its base value is not added)."""
    base = base.astype(scores.dtype, copy=False)
    if len(base) == n_targets:
        scores = scores + base
    elif n_targets == 1 and len(base) == 1:
        scores = scores + base[0]
    if n_targets == 1:
        return probit(scores) if post == "PROBIT" else scores
    return apply_post_transform(np.where(has, scores, 0.0), post)


def make_classifier(at):
    labels = at.get("classlabels_int64s") or at.get("classlabels_strings")
    if not labels:
        raise Unsupported("TreeEnsembleClassifier without class labels")
    n_classes = len(labels)
    if n_classes == 1:
        raise Unsupported("TreeEnsembleClassifier with a single class label")
    post = at.get("post_transform") or "NONE"
    if post not in POST:
        raise Unsupported(f"TreeEnsembleClassifier: post_transform {post!r}")
    forest = forest_v3(at, "class", n_classes, 1)
    base = _base(at, n_classes)
    w_ids, w_val = _attr(at, "class_ids"), _attr(at, "class_weights", "class_weights_as_tensor")
    binary_case = n_classes == 2 and w_ids is not None and len(set(w_ids.tolist())) == 1
    all_positive = w_val is None or bool((w_val >= 0).all())
    strings = not at.get("classlabels_int64s")
    label_array = np.array(labels, dtype=object if strings else np.int64)

    def run(ins, _at=None):
        x = _features(ins[0], forest.threshold.dtype)
        scores, has = forest.aggregate(forest.leaves(x), 1)
        if n_classes > 2:
            z, label_index = _finish_multiclass(scores, has, base, post)
            return label_array.take(label_index), z.astype(np.float32, copy=False)
        z, label_index = _finish_binary(scores, has, base, post, binary_case, all_positive)
        return label_array.take(label_index), z.astype(np.float32, copy=False)
    run.forest = forest  # for tests and benchmarks
    return run


def _finish_multiclass(scores, has, base, post):
    k = len(base)
    if k:
        scores[:, :k] += base
        has = has.copy()
        has[..., :k] = True
    scored = scores if has.all() else np.where(has, scores, -np.inf)  # unscored classes never win
    label = argmax_of_columns(scored)  # first of equal maxima, NaN never, as ORT
    return apply_post_transform(scores, post), label


def _finish_binary(scores, has, base, post, binary_case, all_positive):
    """ORT's two-label rules: which score is 'positive', which label wins, how the 2nd column is made.
    `has` is per row, or one row for all (then the branches below are taken for all rows at once)."""
    s0, s1 = scores[:, 0], scores[:, 1]
    h0, h1 = has[..., 0], has[..., 1]
    if len(base) == 2:
        s1 = np.where(h1, base[1] + s0, s1 + base[1])
        s0 = np.where(h1, -s1, s0 + base[0])
        two = True
    else:
        if len(base) == 1:
            s0 = s0 + base[0]
        two = h1  # rows that keep both scores (ORT drops the second where class 1 never scored)
    pos = np.where(h1, s1, np.where(h0, s0, 0)) if has.ndim > 1 else s1 if h1 else s0 if h0 else 0 * s0
    if binary_case:
        positive = pos > (0.5 if all_positive else 0.0)
        mode = "flip" if all_positive else "negate"
    else:
        positive = pos > 0  # ORT's fixed positive/negative labels, 1 and 0
        mode = "negate" if len(base) == 0 else "plain"
    label = positive.astype(np.int64)
    if np.ndim(two) == 0:  # the same for every row
        if two:
            return apply_post_transform(np.stack([s0, s1], axis=1), post), label
        return _second_column(s0, mode, post), label
    z = np.zeros((len(s0), 2), scores.dtype)
    if two.any():
        z[two] = apply_post_transform(np.stack([s0[two], s1[two]], axis=1), post)
    if not two.all():
        z[~two] = _second_column(s0[~two], mode, post)
    return z, label


def _second_column(s, mode, post):
    """The two columns ORT writes for a single binary score (measured on ORT 1.32): LOGISTIC gives
    logistic(-s), logistic(s); otherwise 1 - s, s when all weights are positive ('flip') and -s, s
    when not ('negate'); other transforms are not applied. PROBIT, and rows of a non-binary
    ensemble ('plain'), get one column, probit(s) or s, and ORT leaves the second unset (whatever
    was in memory): 0 here. Each case in as few NumPy calls as possible (a row costs ~0.5 us a call)."""
    column = s[:, None]
    if post == "PROBIT" or mode == "plain":
        out = np.zeros((len(s), 2), s.dtype)
        out[:, 0] = probit(s) if post == "PROBIT" else s
        return out
    if post == "LOGISTIC":  # 1 / (1 + exp(s)), 1 / (1 + exp(-s)); exponents kept finite
        out = clip_ufunc(column * _PLUS_MINUS.get(s.dtype, _PLUS_MINUS[np.dtype(np.float64)]), -88, 88)
        np.exp(out, out=out)
        out += 1
        return np.reciprocal(out, out=out)
    if mode == "flip":
        return column * _MINUS_PLUS[s.dtype] + _ONE_ZERO[s.dtype]
    return column * _MINUS_PLUS[s.dtype]


_PLUS_MINUS = {np.dtype(t): np.array([1, -1], t) for t in (np.float32, np.float64)}
_MINUS_PLUS = {np.dtype(t): np.array([-1, 1], t) for t in (np.float32, np.float64)}
_ONE_ZERO = {np.dtype(t): np.array([1, 0], t) for t in (np.float32, np.float64)}


kernel_from_attributes("TreeEnsembleRegressor", make_regressor, domain=ML)
kernel_from_attributes("TreeEnsembleClassifier", make_classifier, domain=ML)


# --- TreeEnsemble (ml opset 5) ------------------------------------------------------------

def make_tree_ensemble(at):
    """TreeEnsemble-5: branch nodes and leaves in separate arrays; leaves go after the nodes here."""
    mode = np.asarray(at["nodes_modes"]).reshape(-1).astype(np.int64)
    if ((mode < 0) | (mode > 6)).any():
        raise Unsupported(f"TreeEnsemble: unknown node mode in {sorted(set(mode.tolist()))}")
    n = len(mode)
    leaf_t = np.asarray(at["leaf_targetids"], np.int64)
    leaf_w = np.asarray(at["leaf_weights"]).reshape(-1)
    n_leaves, n_targets = len(leaf_t), int(at["n_targets"])
    agg, post = int(at.get("aggregate_function", 1)), int(at.get("post_transform", 0))
    if not 0 <= agg <= 3 or not 0 <= post <= 4:
        raise Unsupported(f"TreeEnsemble: aggregate_function {agg} / post_transform {post}")

    def targets(ids, is_leaf):
        return np.where(np.asarray(is_leaf, bool), n + np.asarray(ids, np.int64), np.asarray(ids, np.int64))
    true_next = np.concatenate([targets(at["nodes_truenodeids"], at["nodes_trueleafs"]), n + np.arange(n_leaves)])
    false_next = np.concatenate([targets(at["nodes_falsenodeids"], at["nodes_falseleafs"]), n + np.arange(n_leaves)])
    splits = np.asarray(at["nodes_splits"]).reshape(-1)
    threshold = np.concatenate([splits, np.zeros(n_leaves, splits.dtype)])
    all_mode = np.concatenate([mode, np.full(n_leaves, 7)])
    feature = np.concatenate([np.asarray(at["nodes_featureids"], np.int64), np.zeros(n_leaves, np.int64)])
    missing = np.zeros(n + n_leaves, bool)
    if at.get("nodes_missing_value_tracks_true"):
        missing[:n] = np.asarray(at["nodes_missing_value_tracks_true"], bool)
    weights = np.zeros((n + n_leaves, n_targets), leaf_w.dtype)
    has = np.zeros((n + n_leaves, n_targets), bool)
    weights[n + np.arange(n_leaves), leaf_t] = leaf_w
    has[n + np.arange(n_leaves), leaf_t] = True
    members = _membership(at.get("membership_values"), mode)
    forest = Forest(feature, threshold, all_mode, true_next, false_next, missing,
                    np.asarray(at["tree_roots"], np.int64), weights, has, members)

    def run(ins, _at=None):
        x = _features(ins[0], splits.dtype)
        scores, has = forest.aggregate(forest.leaves(x), agg)
        scores = finish_regression(scores, has, np.zeros(0), n_targets, POST_V5_AS_ORT[post])
        return (scores.astype(ins[0].dtype if ins[0].dtype.kind == "f" else splits.dtype),)
    run.forest = forest  # for tests and benchmarks
    return run


def _membership(values, mode):
    """BRANCH_MEMBER sets (one per member node, in node order, separated by NaN) as sorted lookup keys."""
    member_nodes = np.nonzero(mode == 6)[0]
    if not len(member_nodes):
        return None
    if values is None:
        raise Unsupported("TreeEnsemble: BRANCH_MEMBER nodes without membership_values")
    values = np.asarray(values, np.float64).reshape(-1)
    sets = np.split(values, np.nonzero(np.isnan(values))[0])
    sets = [s[~np.isnan(s)] for s in sets]
    distinct = np.unique(values[~np.isnan(values)])
    keys = [node * len(distinct) + np.searchsorted(distinct, s)
            for node, s in zip(member_nodes.tolist(), sets)]
    keys = np.unique(np.concatenate(keys)) if keys else np.zeros(0, np.int64)
    if not len(distinct):
        distinct, keys = np.array([np.nan]), np.array([-1])
    return keys.astype(np.int64), distinct


kernel_from_attributes("TreeEnsemble", make_tree_ensemble, since=5, domain=ML)
