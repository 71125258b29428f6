"""Replays every case the fuzzer saved (tests/regressions/<case>/model.onnx + inputs.npz + meta.json):
all checks of bench.fuzz.check must pass. A case whose fix belongs to another module's owner is
marked in its meta.json ("xfail": reason) and must keep failing until fixed (strict)."""
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent
ROOT = HERE.parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import fuzz  # noqa: E402

CASES = sorted(p.parent.name for p in HERE.glob("*/meta.json"))


@pytest.mark.parametrize("name", CASES)
def test_replay(name, request):
    model, feeds, meta = fuzz.load_case(HERE / name)
    if meta.get("xfail"):
        request.applymarker(pytest.mark.xfail(strict=True, reason=meta["xfail"]))
    failures, _ = fuzz.check(model, feeds)
    assert not failures, "; ".join(f"{f.key}: {f.detail}" for f in failures)
