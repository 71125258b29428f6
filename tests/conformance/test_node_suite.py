"""The onnx package's node test suite (1884 single-op models) run on graphopt's Session.

The cases are generated in memory from onnx.backend.test.case.node (the installed onnx wheel ships
no data files). expected_failures.txt lists the cases known to fail, each with a reason; a case
that fails without being listed fails the test, and so does a listed case that passes, so the list
can only shrink.
"""
from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
from onnx.backend.test.runner import Runner

from backend import GraphoptBackend  # tests/conformance is on sys.path (rootdir-relative imports)

HERE = os.path.dirname(os.path.abspath(__file__))


def _collect():
    import onnx.backend.test.case.node as node_cases
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        return {c.name: c for c in node_cases.collect_testcases()}


def _expected_failures() -> dict[str, str]:
    listed = {}
    with open(os.path.join(HERE, "expected_failures.txt")) as f:
        for line in f:
            name, _, reason = line.partition("#")
            if name.strip():
                listed[name.strip()] = reason.strip()
    return listed


CASES = _collect()
EXPECTED_FAILURES = _expected_failures()


def run_case(case) -> None:
    """What onnx's Runner does for a node case: prepare, run each data set, compare."""
    rep = GraphoptBackend.prepare(case.model, "CPU")
    for inputs, outputs in case.data_sets:
        inputs = [Runner._normalize_tensor(x) if hasattr(Runner, "_normalize_tensor") else _normalize(x)
                  for x in inputs]
        expected = [_normalize(x) for x in outputs]
        with np.errstate(all="ignore"):
            got = rep.run(inputs)
        assert_similar(expected, list(got), rtol=case.rtol, atol=case.atol)


def assert_similar(expected, got, rtol, atol):
    """onnx's Runner.assert_similar_outputs, recursing into sequences element by element (the
    Runner passes a sequence's arrays back in as output lists, which breaks on 0-d elements)."""
    assert len(got) == len(expected), f"{len(got)} outputs, expected {len(expected)}"
    for i, (e, g) in enumerate(zip(expected, got)):
        if isinstance(e, (list, tuple)) or isinstance(g, (list, tuple)):
            assert isinstance(g, (list, tuple)) and isinstance(e, (list, tuple)), \
                f"output {i}: got {type(g).__name__}, expected {type(e).__name__}"
            assert_similar(list(e), list(g), rtol, atol)
        elif e is None or g is None:
            assert e is None and g is None, f"output {i}: got {g!r}, expected {e!r}"
        else:
            Runner.assert_similar_outputs([e], [g], rtol=rtol, atol=atol)


def _normalize(x):
    import onnx
    if isinstance(x, onnx.TensorProto):
        return onnx.numpy_helper.to_array(x)
    return x


def run_random_case(case) -> None:
    """Bernoulli draws random bits: the values cannot equal the suite's, so check what can be checked
    (output count, shape, dtype, every value 0 or 1)."""
    rep = GraphoptBackend.prepare(case.model, "CPU")
    for inputs, outputs in case.data_sets:
        got = list(rep.run([_normalize(x) for x in inputs]))
        assert len(got) == len(outputs)
        for e, g in zip((_normalize(x) for x in outputs), got):
            assert g.shape == e.shape and g.dtype == e.dtype, (g.shape, e.shape, g.dtype, e.dtype)
            assert np.isin(g, (0, 1)).all(), "Bernoulli output outside {0, 1}"


@pytest.mark.parametrize("name", sorted(CASES))
def test_node(name):
    case = CASES[name]
    if name.startswith("test_bernoulli"):  # random: may match the suite's values by chance
        run_random_case(case)
        pytest.xfail(EXPECTED_FAILURES.get(name, "random output"))
    try:
        run_case(case)
    except Exception:
        if name in EXPECTED_FAILURES:
            pytest.xfail(EXPECTED_FAILURES[name] or "listed in expected_failures.txt")
        raise
    if name in EXPECTED_FAILURES:
        pytest.fail(f"{name} passes now: remove it from tests/conformance/expected_failures.txt")


def test_expected_failures_are_real_cases():
    stale = sorted(set(EXPECTED_FAILURES) - set(CASES))
    assert not stale, f"expected_failures.txt names cases the suite does not have: {stale}"
