"""Small scikit-learn models converted with skl2onnx, for the ai.onnx.ml kernel tests and bench/ml_bench.py.

Synthetic data only (make_classification / make_regression with fixed seeds), trained in well under a
second each, so nothing is downloaded and the tests stay fast."""
from __future__ import annotations

import numpy as np

N_FEATURES = 8


def _data(kind, n_classes=2, seed=0):
    from sklearn.datasets import make_classification, make_regression
    if kind == "reg":
        x, y = make_regression(n_samples=300, n_features=N_FEATURES, noise=0.5, random_state=seed)
    else:
        x, y = make_classification(n_samples=300, n_features=N_FEATURES, n_informative=5,
                                   n_classes=n_classes, random_state=seed)
    return x.astype(np.float32), y


def _convert(est, options=None, n_features=N_FEATURES, zipmap=False):
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType
    opts = {id(est): {"zipmap": False, **(options or {})}} if not zipmap and hasattr(est, "predict_proba") \
        else ({id(est): options} if options else None)
    return to_onnx(est, initial_types=[("X", FloatTensorType([None, n_features]))],
                   options=opts, target_opset={"": 17, "ai.onnx.ml": 3})


def build(name):
    """(onnx.ModelProto, X float32) for one named model."""
    from sklearn import ensemble, linear_model, preprocessing, svm
    if name == "random_forest_classifier":
        x, y = _data("clf", 3)
        est = ensemble.RandomForestClassifier(n_estimators=20, max_depth=8, random_state=0).fit(x, y)
    elif name == "random_forest_regressor":
        x, y = _data("reg")
        est = ensemble.RandomForestRegressor(n_estimators=20, max_depth=8, random_state=0).fit(x, y)
    elif name == "gradient_boosting_binary":
        x, y = _data("clf", 2)
        est = ensemble.GradientBoostingClassifier(n_estimators=30, max_depth=3, random_state=0).fit(x, y)
    elif name == "gradient_boosting_multiclass":
        x, y = _data("clf", 3)
        est = ensemble.GradientBoostingClassifier(n_estimators=20, max_depth=3, random_state=0).fit(x, y)
    elif name == "gradient_boosting_regressor":
        x, y = _data("reg")
        est = ensemble.GradientBoostingRegressor(n_estimators=30, max_depth=3, random_state=0).fit(x, y)
    elif name == "logistic_regression_binary":
        x, y = _data("clf", 2)
        est = linear_model.LogisticRegression(max_iter=500).fit(x, y)
    elif name == "logistic_regression_multiclass":
        x, y = _data("clf", 3)
        est = linear_model.LogisticRegression(max_iter=500).fit(x, y)
    elif name == "linear_regression":
        x, y = _data("reg")
        est = linear_model.LinearRegression().fit(x, y)
    elif name == "svc_binary":
        x, y = _data("clf", 2)
        est = svm.SVC(probability=False).fit(x, y)
    elif name == "svc_multiclass_proba":
        x, y = _data("clf", 3)
        est = svm.SVC(probability=True, random_state=0).fit(x, y)
    elif name == "svc_multiclass":
        x, y = _data("clf", 3)
        est = svm.SVC(kernel="poly", degree=2).fit(x, y)
    elif name == "svr":
        x, y = _data("reg")
        est = svm.SVR(kernel="rbf").fit(x, y)
    elif name == "normalizer":
        x, _ = _data("reg")
        est = preprocessing.Normalizer(norm="l2").fit(x)
    elif name == "binarizer":
        x, _ = _data("reg")
        est = preprocessing.Binarizer(threshold=0.2).fit(x)
    elif name == "random_forest_zipmap":
        x, y = _data("clf", 3)
        est = ensemble.RandomForestClassifier(n_estimators=10, max_depth=6, random_state=0).fit(x, y)
        return _convert(est, zipmap=True), x
    elif name == "pipeline":
        return _pipeline()
    else:
        raise KeyError(name)
    return _convert(est), x


def _pipeline():
    """StandardScaler on the numeric columns + OneHotEncoder on a categorical one (ColumnTransformer),
    then a classifier; one float input whose last column holds the category 0..3."""
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler
    x, y = _data("clf", 3)
    cat = np.random.default_rng(0).integers(0, 4, size=(len(x), 1)).astype(np.float32)
    x = np.concatenate([x, cat], axis=1)
    pre = ColumnTransformer([("num", StandardScaler(), list(range(N_FEATURES))),
                             ("cat", OneHotEncoder(handle_unknown="ignore"), [N_FEATURES])])
    pipe = Pipeline([("pre", pre), ("clf", LogisticRegression(max_iter=500))]).fit(x, y)
    return _convert(pipe, n_features=N_FEATURES + 1), x


NAMES = ["random_forest_classifier", "random_forest_regressor", "gradient_boosting_binary",
         "gradient_boosting_multiclass", "gradient_boosting_regressor", "logistic_regression_binary",
         "logistic_regression_multiclass", "linear_regression", "svc_binary", "svc_multiclass",
         "svc_multiclass_proba", "svr", "normalizer", "binarizer", "random_forest_zipmap", "pipeline"]
