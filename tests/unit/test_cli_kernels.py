"""`graphopt kernels`: every listed file:line is where that kernel's function is defined."""
import re
from pathlib import Path

from graphopt.cli import main

ROOT = Path(__file__).resolve().parents[2]


def _listing(capsys, *args):
    assert main(["kernels", *args]) == 0
    return capsys.readouterr().out.splitlines()[1:]


def test_each_row_points_at_the_kernel_definition(capsys):
    rows = _listing(capsys, "--device", "cpu")
    assert len(rows) > 200
    for row in rows:
        for path, line in re.findall(r"(kernels/\S+\.py):(\d+)", row):
            text = (ROOT / path).read_text().splitlines()[int(line) - 1]
            assert re.match(r"\s*(def |class |@|\w+ = )", text) or "lambda" in text, (row, text)


def test_op_filter_lists_every_domain_and_the_prepare_hook(capsys):
    rows = _listing(capsys, "--op", "conv")
    assert [r.split()[0] for r in rows] == ["ai.onnx/Conv"]
    assert "prepared: kernels/cpu/" in rows[0]
    domains = {r.split()[0] for r in _listing(capsys, "--op", "Attention")}
    assert {"ai.onnx/Attention", "ai.graphopt/Attention", "com.microsoft/Attention"} <= domains


def test_unknown_op_is_a_usage_error(capsys):
    assert main(["kernels", "--op", "NoSuchOp"]) == 2
    assert "no kernel registered for op 'NoSuchOp'" in capsys.readouterr().err
