"""ai.onnx.ml kernels (kernels/cpu/ml_*.py) against ONNX Runtime on the same model.

Two kinds of models: scikit-learn estimators converted by skl2onnx (tests/unit/ml_models.py), and
hand-built tree ensembles covering what skl2onnx never writes (node modes other than BRANCH_LEQ,
NaN with missing-value tracks, MIN/MAX/AVERAGE, every post transform, string labels, double
thresholds, TreeEnsemble-5 with set membership). Labels must equal ORT's, scores match within 1e-5.
"""
from __future__ import annotations

import zlib

import numpy as np
import pytest
from onnx import TensorProto, helper

from graphopt.errors import Unsupported
from graphopt.runtime import Session
from graphopt.verify import ort_session

ML = "ai.onnx.ml"


# ORT's PROBIT is Winitzki's erfinv formula in float32, which cancels near p = 0.5: there ORT's own
# result is off from the formula's exact value by up to 1e-3 (steps of 2^-10), graphopt's too, not
# always in the same direction; elsewhere they agree within 4e-6 (measured on 20000 points)
PROBIT_ATOL = 1.5e-3


def compare(model, feed, rtol=1e-5, atol=1e-5):
    """graphopt's outputs equal ORT's on `feed`, and for a one-input feed also on its first row
    alone and on it repeated 40 times (the tree kernels pick a traversal by batch size)."""
    feeds = [feed]
    if len(feed) == 1:
        (name, x), = feed.items()
        if x.ndim == 2 and len(x) > 1:
            feeds += [{name: x[:1]}, {name: np.tile(x, (40, 1))}]
    ort, sess = ort_session(model), Session(model)
    for one in feeds:
        want = ort.run(None, one)
        for _ in range(2):  # the second run takes the compiled plan
            _check(sess.run(None, one), want, rtol, atol)


def _check(got, want, rtol, atol):
    assert len(got) == len(want)
    for w, g in zip(want, got):
        if isinstance(w, list):  # ZipMap: one {label: probability} per row
            assert isinstance(g, list) and len(g) == len(w)
            assert [list(d) for d in g] == [list(d) for d in w]
            np.testing.assert_allclose([list(d.values()) for d in g], [list(d.values()) for d in w],
                                       rtol=rtol, atol=atol)
        elif w.dtype.kind in "iuOUSb":
            assert g.dtype == w.dtype and g.shape == w.shape and (g == w).all(), (w, g)
        else:
            assert g.dtype == w.dtype and g.shape == w.shape
            np.testing.assert_allclose(g, w, rtol=rtol, atol=atol)


# --- scikit-learn models ---------------------------------------------------------------------

SKL = ["random_forest_classifier", "random_forest_regressor", "gradient_boosting_binary",
       "gradient_boosting_multiclass", "gradient_boosting_regressor", "logistic_regression_binary",
       "logistic_regression_multiclass", "linear_regression", "svc_binary", "svc_multiclass",
       "svc_multiclass_proba", "svr", "normalizer", "binarizer", "random_forest_zipmap", "pipeline"]


@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.parametrize("name", SKL)
def test_sklearn_model_matches_ort(name):
    pytest.importorskip("sklearn")
    pytest.importorskip("skl2onnx")
    from ml_models import build
    model, x = build(name)
    # regressor outputs are O(100): float32 sums in another order differ in the last bits
    compare(model, {model.graph.input[0].name: x}, rtol=1e-5, atol=1e-5 if "regress" not in name else 1e-4)


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_svc_probabilities_one_row_at_a_time():
    """One row takes a scalar (float64) path through the pairwise coupling, ORT's loop is float32:
    every row of the model's data, alone, within 1e-5 and with ORT's label."""
    pytest.importorskip("sklearn")
    pytest.importorskip("skl2onnx")
    from ml_models import build
    model, x = build("svc_multiclass_proba")
    ort, sess = ort_session(model), Session(model)
    for row in x:
        _check(sess.run(None, {"X": row[None]}), ort.run(None, {"X": row[None]}), 1e-5, 1e-5)


def test_zipmap_output_is_a_list_of_dicts_like_ort():
    model = _single_node_model(
        helper.make_node("ZipMap", ["X"], ["Z"], domain=ML, classlabels_strings=["a", "b", "c"]),
        out_type=helper.make_sequence_type_proto(helper.make_map_type_proto(TensorProto.STRING,
                                                                            helper.make_tensor_type_proto(TensorProto.FLOAT, []))))
    x = np.array([[0.1, 0.2, 0.7], [0.5, 0.25, 0.25]], np.float32)
    (got,) = Session(model).run(None, {"X": x})
    (want,) = ort_session(model).run(None, {"X": x})
    assert got == want and all(type(v) is float for row in got for v in row.values())


# --- hand-built tree ensembles ----------------------------------------------------------------

MODES = ["BRANCH_LEQ", "BRANCH_LT", "BRANCH_GTE", "BRANCH_GT", "BRANCH_EQ", "BRANCH_NEQ"]


def random_trees(rng, n_trees=6, depth=4, n_features=5, n_targets=3, modes=MODES, positive=False):
    """Full binary trees with random modes, features and thresholds from {0, .., 4} (so EQ/NEQ
    branches are taken), missing-value tracks on some nodes, and one or two weights per leaf."""
    nodes = {k: [] for k in ("treeids", "nodeids", "featureids", "values", "modes", "truenodeids",
                             "falsenodeids", "missing")}
    leaves = {k: [] for k in ("treeids", "nodeids", "ids", "weights")}
    for t in range(n_trees):
        for i in range(2 ** (depth + 1) - 1):
            leaf = i >= 2 ** depth - 1
            nodes["treeids"].append(t)
            nodes["nodeids"].append(i)
            nodes["featureids"].append(0 if leaf else int(rng.integers(n_features)))
            nodes["values"].append(0.0 if leaf else float(rng.integers(0, 5)) + (0.5 if rng.random() < 0.3 else 0.0))
            nodes["modes"].append("LEAF" if leaf else modes[rng.integers(len(modes))])
            nodes["truenodeids"].append(0 if leaf else 2 * i + 1)
            nodes["falsenodeids"].append(0 if leaf else 2 * i + 2)
            nodes["missing"].append(int(rng.random() < 0.5) if not leaf else 0)
            if leaf:
                for target in rng.choice(n_targets, size=min(n_targets, int(rng.integers(1, 3))), replace=False):
                    w = float(rng.random()) if positive else float(rng.normal())
                    leaves["treeids"].append(t)
                    leaves["nodeids"].append(i)
                    leaves["ids"].append(int(target))
                    leaves["weights"].append(round(w, 3) if rng.random() < 0.8 else 0.0)
    return nodes, leaves


def features(rng, n=64, n_features=5, nan=True):
    x = rng.integers(0, 5, size=(n, n_features)).astype(np.float32)
    x[rng.random(x.shape) < 0.2] += 0.5
    if nan:
        x[rng.random(x.shape) < 0.1] = np.nan
    return x


def v3_attrs(nodes, leaves, prefix, double=False):
    at = {"nodes_treeids": nodes["treeids"], "nodes_nodeids": nodes["nodeids"],
          "nodes_featureids": nodes["featureids"], "nodes_modes": nodes["modes"],
          "nodes_truenodeids": nodes["truenodeids"], "nodes_falsenodeids": nodes["falsenodeids"],
          "nodes_missing_value_tracks_true": nodes["missing"],
          f"{prefix}_treeids": leaves["treeids"], f"{prefix}_nodeids": leaves["nodeids"],
          f"{prefix}_ids": leaves["ids"]}
    if double:
        at["nodes_values_as_tensor"] = helper.make_tensor("v", TensorProto.DOUBLE, [len(nodes["values"])], nodes["values"])
        at[f"{prefix}_weights_as_tensor"] = helper.make_tensor("w", TensorProto.DOUBLE, [len(leaves["weights"])],
                                                               leaves["weights"])
    else:
        at["nodes_values"] = nodes["values"]
        at[f"{prefix}_weights"] = leaves["weights"]
    return at


def _single_node_model(node, out_type=None, label_type=None, ml_opset=3, in_type=TensorProto.FLOAT):
    x = helper.make_tensor_value_info("X", in_type, None)
    outs = []
    for k, name in enumerate(node.output):
        if out_type is not None and k == len(node.output) - 1:
            outs.append(helper.make_value_info(name, out_type))
        elif label_type is not None and k == 0:
            outs.append(helper.make_tensor_value_info(name, label_type, None))
        else:
            outs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT if in_type != TensorProto.DOUBLE
                                                      or ml_opset < 5 else in_type, None))
    graph = helper.make_graph([node], "g", [x], outs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(ML, ml_opset)])
    model.ir_version = 9
    return model


@pytest.mark.parametrize("aggregate", ["SUM", "AVERAGE", "MIN", "MAX"])
@pytest.mark.parametrize("n_targets,post", [(1, "NONE"), (1, "LOGISTIC"), (3, "NONE"), (3, "SOFTMAX"),
                                            (3, "LOGISTIC"), (3, "SOFTMAX_ZERO")])
def test_tree_regressor_modes_aggregates_missing(aggregate, n_targets, post):
    rng = np.random.default_rng(zlib.crc32(f"{aggregate} {n_targets} {post}".encode()))
    nodes, leaves = random_trees(rng, n_targets=n_targets)
    at = v3_attrs(nodes, leaves, "target")
    node = helper.make_node("TreeEnsembleRegressor", ["X"], ["Y"], domain=ML, n_targets=n_targets,
                            aggregate_function=aggregate, post_transform=post,
                            base_values=[0.25 * (k + 1) for k in range(n_targets)], **at)
    compare(_single_node_model(node), {"X": features(rng)})


def test_tree_regressor_probit():
    """PROBIT needs scores in (0, 1): positive weights averaged over the trees."""
    rng = np.random.default_rng(3)
    nodes, leaves = random_trees(rng, n_targets=1, positive=True)
    leaves["weights"] = [min(max(w, 0.05), 0.95) for w in leaves["weights"]]
    node = helper.make_node("TreeEnsembleRegressor", ["X"], ["Y"], domain=ML, n_targets=1,
                            aggregate_function="AVERAGE", post_transform="PROBIT",
                            **v3_attrs(nodes, leaves, "target"))
    compare(_single_node_model(node), {"X": features(rng)}, atol=PROBIT_ATOL)


def test_probit_formula_matches_ort_away_from_one_half():
    """LinearRegressor(x) = x with PROBIT is ORT's probit of each input, value by value."""
    node = helper.make_node("LinearRegressor", ["X"], ["Y"], domain=ML, coefficients=[1.0], intercepts=[0.0],
                            post_transform="PROBIT")
    p = np.random.default_rng(0).uniform(0.01, 0.99, size=(2000, 1)).astype(np.float32)
    want = ort_session(_single_node_model(node)).run(None, {"X": p})[0]
    got = Session(_single_node_model(node)).run(None, {"X": p})[0]
    far = np.abs(p - 0.5) > 0.05
    np.testing.assert_allclose(got[far], want[far], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got, want, atol=PROBIT_ATOL)


def test_tree_regressor_double_thresholds_and_input():
    rng = np.random.default_rng(4)
    nodes, leaves = random_trees(rng, n_targets=2)
    node = helper.make_node("TreeEnsembleRegressor", ["X"], ["Y"], domain=ML, n_targets=2,
                            **v3_attrs(nodes, leaves, "target", double=True))
    x = features(rng, nan=False)
    compare(_single_node_model(node, in_type=TensorProto.DOUBLE), {"X": x.astype(np.float64)})


@pytest.mark.parametrize("post", ["NONE", "SOFTMAX", "LOGISTIC", "SOFTMAX_ZERO", "PROBIT"])
@pytest.mark.parametrize("labels", ["ints", "strings"])
def test_tree_classifier_multiclass(post, labels):
    rng = np.random.default_rng(len(post) * 7 + len(labels))
    nodes, leaves = random_trees(rng, n_targets=3, positive=post == "PROBIT")
    if post == "PROBIT":
        leaves["weights"] = [0.1 + 0.8 * w / 6 for w in leaves["weights"]]  # sums stay in (0, 1)
    names = {"ints": {"classlabels_int64s": [4, 7, 9]}, "strings": {"classlabels_strings": ["a", "b", "c"]}}
    node = helper.make_node("TreeEnsembleClassifier", ["X"], ["Y", "Z"], domain=ML, post_transform=post,
                            base_values=[0.0, 0.05, -0.05], **names[labels], **v3_attrs(nodes, leaves, "class"))
    label_type = TensorProto.INT64 if labels == "ints" else TensorProto.STRING
    compare(_single_node_model(node, label_type=label_type), {"X": features(rng)},
            atol=PROBIT_ATOL if post == "PROBIT" else 1e-5)


# PROBIT with one scored class is left out: ORT writes one of the two columns and leaves the other unset
TWO_LABEL_CASES = [(post, case) for case in ("one_class_mixed", "one_class_positive", "both_classes", "base_two")
                   for post in ("NONE", "LOGISTIC", "SOFTMAX", "PROBIT")
                   if not (post == "PROBIT" and case.startswith("one_class"))]


@pytest.mark.parametrize("post,case", TWO_LABEL_CASES)
def test_tree_classifier_two_labels(post, case):
    """ORT's two-label rules: a single scored class becomes two columns, with its own label rule."""
    rng = np.random.default_rng(len(post) + 11 * len(case))
    positive = case == "one_class_positive" or post == "PROBIT"
    nodes, leaves = random_trees(rng, n_targets=2 if case in ("both_classes", "base_two") else 1,
                                 positive=positive)
    if post == "PROBIT":
        leaves["weights"] = [0.1 + 0.8 * w / 6 for w in leaves["weights"]]
    extra = {"base_values": [0.1, 0.1]} if case == "base_two" else {}
    node = helper.make_node("TreeEnsembleClassifier", ["X"], ["Y", "Z"], domain=ML, post_transform=post,
                            classlabels_int64s=[0, 1], **extra, **v3_attrs(nodes, leaves, "class"))
    compare(_single_node_model(node, label_type=TensorProto.INT64), {"X": features(rng)},
            atol=PROBIT_ATOL if post == "PROBIT" else 1e-5)


def v5_model(nodes, leaves, n_targets, aggregate, post, member=False, dtype=np.float32):
    """The same trees as TreeEnsemble-5: branch nodes and leaves apart; optionally the first branch of
    every tree becomes a BRANCH_MEMBER test on {1, 3}."""
    branch = [k for k, m in enumerate(nodes["modes"]) if m != "LEAF"]
    leaf_nodes = [k for k, m in enumerate(nodes["modes"]) if m == "LEAF"]
    bpos = {(nodes["treeids"][k], nodes["nodeids"][k]): j for j, k in enumerate(branch)}
    weights_by_node = {}
    for t, i, c, w in zip(leaves["treeids"], leaves["nodeids"], leaves["ids"], leaves["weights"]):
        weights_by_node.setdefault((t, i), (c, w))  # one (target, weight) per leaf in this format
    lpos = {(nodes["treeids"][k], nodes["nodeids"][k]): j for j, k in enumerate(leaf_nodes)}
    mode_code = {m: c for c, m in enumerate(MODES)}
    modes, members = [], []
    for k in branch:
        m = mode_code[nodes["modes"][k]]
        if member and nodes["nodeids"][k] == 0:
            m = 6
            members += [1.0, 3.0, np.nan]
        modes.append(m)

    def child(k, side):
        key = (nodes["treeids"][k], nodes[side][k])
        return (lpos[key], 1) if key in lpos else (bpos[key], 0)
    tc, fc = [child(k, "truenodeids") for k in branch], [child(k, "falsenodeids") for k in branch]
    ttype = TensorProto.FLOAT if dtype == np.float32 else TensorProto.DOUBLE
    splits = [nodes["values"][k] for k in branch]
    lw = [weights_by_node.get(key, (0, 0.0)) for key in sorted(lpos, key=lpos.get)]
    at = dict(n_targets=n_targets, aggregate_function=aggregate, post_transform=post,
              tree_roots=[bpos[(t, 0)] for t in sorted(set(nodes["treeids"]))],
              nodes_featureids=[nodes["featureids"][k] for k in branch],
              nodes_splits=helper.make_tensor("s", ttype, [len(splits)], splits),
              nodes_modes=helper.make_tensor("m", TensorProto.UINT8, [len(modes)], modes),
              nodes_truenodeids=[c for c, _ in tc], nodes_trueleafs=[f for _, f in tc],
              nodes_falsenodeids=[c for c, _ in fc], nodes_falseleafs=[f for _, f in fc],
              nodes_missing_value_tracks_true=[nodes["missing"][k] for k in branch],
              leaf_targetids=[c for c, _ in lw],
              leaf_weights=helper.make_tensor("w", ttype, [len(lw)], [w for _, w in lw]))
    if member:
        at["membership_values"] = helper.make_tensor("mv", ttype, [len(members)], members)
    node = helper.make_node("TreeEnsemble", ["X"], ["Y"], domain=ML, **at)
    x = helper.make_tensor_value_info("X", ttype, None)
    y = helper.make_tensor_value_info("Y", ttype, None)
    model = helper.make_model(helper.make_graph([node], "g", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid(ML, 5)])
    model.ir_version = 10
    return model


@pytest.mark.parametrize("aggregate", [0, 1, 2, 3])  # AVERAGE, SUM, MIN, MAX
@pytest.mark.parametrize("member", [False, True])
def test_tree_ensemble_5(aggregate, member):
    rng = np.random.default_rng(aggregate * 2 + member)
    nodes, leaves = random_trees(rng, n_targets=2)
    compare(v5_model(nodes, leaves, 2, aggregate, 0, member), {"X": features(rng)})


@pytest.mark.parametrize("post", [1, 2, 3])  # ORT reads 1 as LOGISTIC, 2 as SOFTMAX (the spec: the reverse)
def test_tree_ensemble_5_post_transforms_double(post):
    rng = np.random.default_rng(20 + post)
    nodes, leaves = random_trees(rng, n_targets=3)
    compare(v5_model(nodes, leaves, 3, 1, post, member=True, dtype=np.float64),
            {"X": features(rng).astype(np.float64)})


@pytest.mark.parametrize("post", [1, 2, 4])
def test_tree_ensemble_5_one_target(post):
    """With one target ORT applies PROBIT only (scores kept in (0, 1) for it), as for the older ops."""
    rng = np.random.default_rng(40 + post)
    nodes, leaves = random_trees(rng, n_targets=1, positive=True)
    leaves["weights"] = [0.1 + 0.1 * w for w in leaves["weights"]]
    compare(v5_model(nodes, leaves, 1, 0, post), {"X": features(rng)}, atol=PROBIT_ATOL if post == 4 else 1e-5)


@pytest.mark.parametrize("member", [False, True])
def test_walking_and_pointer_jumping_find_the_same_leaves(member):
    """Both traversals of kernels/cpu/ml_trees.Forest, on mixed modes, NaN with missing tracks and
    (TreeEnsemble-5) set membership, for one row and for many."""
    from graphopt.kernels.cpu.ml_trees import make_tree_ensemble
    from graphopt.ir.attributes import resolve_attributes
    rng = np.random.default_rng(30 + member)
    nodes, leaves = random_trees(rng, n_targets=2)
    model = v5_model(nodes, leaves, 2, 1, 0, member)
    forest = make_tree_ensemble(resolve_attributes(model.graph.node[0], 5)).forest
    for x in (features(rng, n=1), features(rng, n=50)):
        np.testing.assert_array_equal(forest._leaves_by_walking(x), forest._leaves_by_jumps(x))


def test_feature_index_past_the_input_is_an_error_not_another_rows_value():
    from graphopt.errors import KernelFailed
    rng = np.random.default_rng(1)
    nodes, leaves = random_trees(rng, n_targets=1, n_features=5)
    nodes["featureids"][0] = 4  # the root tests feature 4; rows have 3
    node = helper.make_node("TreeEnsembleRegressor", ["X"], ["Y"], domain=ML, n_targets=1,
                            **v3_attrs(nodes, leaves, "target"))
    with pytest.raises(KernelFailed, match="feature"):
        Session(_single_node_model(node)).run(None, {"X": features(rng, n_features=3)})


def test_unknown_mode_is_refused_at_build():
    rng = np.random.default_rng(0)
    nodes, leaves = random_trees(rng, n_targets=1, n_trees=1, depth=1)
    nodes["modes"][0] = "BRANCH_SOMETHING"
    node = helper.make_node("TreeEnsembleRegressor", ["X"], ["Y"], domain=ML, n_targets=1,
                            **v3_attrs(nodes, leaves, "target"))
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(ML, 3)])
    with pytest.raises(Unsupported, match="mode"):
        Session(model)


# --- preprocessing ops ---------------------------------------------------------------------

def test_scaler_imputer_onehot_category_mapper_feature_vectorizer():
    x = np.array([[1.0, np.nan, 3.0], [0.0, 2.0, np.nan]], np.float32)
    compare(_single_node_model(helper.make_node("Imputer", ["X"], ["Y"], domain=ML, imputed_value_floats=[9.0, 8.0, 7.5],
                                                replaced_value_float=float("nan"))), {"X": x})
    compare(_single_node_model(helper.make_node("Scaler", ["X"], ["Y"], domain=ML, offset=[1.0, 2.0, 3.0],
                                                scale=[0.5, 2.0, -1.0])), {"X": np.nan_to_num(x)})
    compare(_single_node_model(helper.make_node("Normalizer", ["X"], ["Y"], domain=ML, norm="L1")),
            {"X": np.nan_to_num(x) + 1})
    ints = np.array([[1, 5], [7, 1]], np.int64)
    compare(_single_node_model(helper.make_node("OneHotEncoder", ["X"], ["Y"], domain=ML, cats_int64s=[7, 1, 3]),
                               in_type=TensorProto.INT64), {"X": ints})
    words = np.array([["a", "zz"], ["c", "a"]], dtype=object)
    compare(_single_node_model(helper.make_node("OneHotEncoder", ["X"], ["Y"], domain=ML, cats_strings=["c", "a"]),
                               in_type=TensorProto.STRING), {"X": words})
    compare(_single_node_model(helper.make_node("CategoryMapper", ["X"], ["Y"], domain=ML, cats_strings=["a", "c"],
                                                cats_int64s=[10, 30]), label_type=TensorProto.INT64,
                               in_type=TensorProto.STRING), {"X": words})
    vec = helper.make_node("FeatureVectorizer", ["X", "X2"], ["Y"], domain=ML, inputdimensions=[2, 3])
    graph = helper.make_graph([vec], "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [2, 3]),
                                           helper.make_tensor_value_info("X2", TensorProto.FLOAT, [2, 2])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(ML, 1)])
    compare(model, {"X": np.nan_to_num(x), "X2": ints.astype(np.float32)})


def test_linear_regressor_targets_and_svm_modes_skl2onnx_does_not_write():
    rng = np.random.default_rng(7)
    x = rng.normal(size=(20, 4)).astype(np.float32)
    for post in ("NONE", "SOFTMAX", "LOGISTIC"):
        node = helper.make_node("LinearRegressor", ["X"], ["Y"], domain=ML, targets=3, post_transform=post,
                                coefficients=rng.normal(size=12).round(3).tolist(), intercepts=[0.1, -0.2, 0.3])
        compare(_single_node_model(node, ml_opset=1), {"X": x})
    # SVMClassifier without support vectors: liblinear's one weight row per class
    for labels in ([3, 5], [1, 2, 3]):
        node = helper.make_node("SVMClassifier", ["X"], ["Y", "Z"], domain=ML, classlabels_ints=labels,
                                coefficients=rng.normal(size=4 * len(labels)).round(3).tolist(), rho=[0.25],
                                kernel_type="LINEAR", kernel_params=[0.0, 0.0, 0.0], post_transform="NONE")
        compare(_single_node_model(node, label_type=TensorProto.INT64, ml_opset=1), {"X": x})
    # SVMRegressor with sigmoid kernel, and as a one-class SVM (scores become +-1)
    vectors = rng.normal(size=(5, 4)).round(3)
    for one_class in (0, 1):
        node = helper.make_node("SVMRegressor", ["X"], ["Y"], domain=ML, n_supports=5, one_class=one_class,
                                support_vectors=vectors.reshape(-1).tolist(), coefficients=[0.5, -0.25, 1.0, 0.3, -0.7],
                                rho=[0.1], kernel_type="SIGMOID", kernel_params=[0.2, 0.1, 0.0])
        compare(_single_node_model(node, ml_opset=1), {"X": x})


def test_normalizer_max_and_category_mapper_to_strings():
    x = np.array([[1.0, -3.0, 2.0], [0.5, 0.25, 4.0]], np.float32)
    compare(_single_node_model(helper.make_node("Normalizer", ["X"], ["Y"], domain=ML, norm="MAX")), {"X": x})
    ints = np.array([[10, 20], [30, 10]], np.int64)
    node = helper.make_node("CategoryMapper", ["X"], ["Y"], domain=ML, cats_strings=["a", "c"], cats_int64s=[10, 30],
                            default_string="?")
    compare(_single_node_model(node, label_type=TensorProto.STRING, in_type=TensorProto.INT64), {"X": ints})
