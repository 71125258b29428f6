"""--int8-activations auto (passes/quantize/cpu_format.py), the HardSigmoid -> depthwise Conv
rewrite (passes/quantize/int8_friendly.py) and the count of what ORT fuses (ort_fusion.py).

Expected values come from ONNX Runtime on the float model; the format decision is checked on
synthetic CPU flag sets, so these tests do not depend on the machine they run on.
"""
from __future__ import annotations

import numpy as np
import onnx
import onnx.parser
import pytest
from onnx import numpy_helper

from graphopt import lossy
from graphopt.cli import main
from graphopt.passes.quantize import cpu_format
from graphopt.passes.quantize.cpu_format import DECISION_TABLE, choose_format, cpu_flags
from graphopt.passes.quantize.int8_friendly import hard_sigmoid_as_conv
from graphopt.passes.quantize.ort_fusion import fusion_summary, ort_optimized
from graphopt.verify import ort_session as _ort

import quant_models as qm


@pytest.mark.parametrize("flags, machine, row, acts, bits", [
    ({"sse2", "avx2", "avx512bw", "avx512_vnni"}, "x86_64", "x86 VNNI", "uint8", 8),
    ({"avx2", "avx_vnni"}, "x86_64", "x86 VNNI", "uint8", 8),          # Alder Lake style AVX-VNNI
    ({"avx2", "avx512_vnni", "amx_int8", "amx_tile"}, "x86_64", "x86 AMX", "uint8", 8),
    ({"avx2", "avx512bw", "avx512f"}, "x86_64", "x86 AVX2 / AVX-512 without VNNI", "uint8", 7),
    ({"avx2"}, "x86_64", "x86 AVX2 / AVX-512 without VNNI", "uint8", 7),
    ({"sse4_1"}, "AMD64", "x86 AVX2 / AVX-512 without VNNI", "uint8", 7),
    ({"fp", "asimd", "asimddp"}, "aarch64", "ARM with dot product", "int8", 8),
    ({"fp", "asimd", "i8mm"}, "arm64", "ARM with dot product", "int8", 8),
    ({"fp", "asimd"}, "aarch64", "fallback", "int8", 8),                # no dot product: safe default
    (None, "x86_64", "fallback", "int8", 8),                           # flags unreadable
    ({"avx512_vnni"}, "riscv64", "fallback", "int8", 8),               # flags of another architecture
])
def test_decision_on_synthetic_flag_sets(flags, machine, row, acts, bits):
    choice = choose_format(flags, machine)
    assert (choice.row.name, choice.activations, choice.weight_bits) == (row, acts, bits)
    text = choice.to_text()
    assert text.startswith("--int8-activations auto:") and row in text and f"{bits}-bit weights" in text


def test_every_row_records_its_evidence_and_the_table_ends_with_a_fallback():
    for row in DECISION_TABLE:
        assert row.activations in ("int8", "uint8") and row.weight_bits in (7, 8) and row.why and row.evidence
    assert DECISION_TABLE[-1].arch == "any" and not DECISION_TABLE[-1].needs_any


def test_cpu_flags_from_cpuinfo_files(tmp_path):
    x86 = tmp_path / "x86"
    x86.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu avx2 avx512bw avx512_vnni\n\n"
                   "processor\t: 1\nflags\t\t: fpu\n")
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd asimddp\nCPU implementer\t: 0x41\n")
    assert cpu_flags(x86) == {"fpu", "avx2", "avx512bw", "avx512_vnni"}  # the first processor's
    assert cpu_flags(arm) == {"fp", "asimd", "asimddp"}
    assert cpu_flags(tmp_path / "missing") is None
    (tmp_path / "none").write_text("processor\t: 0\n")
    assert cpu_flags(tmp_path / "none") is None


def _q_dtypes(model):
    inits = {t.name: t for t in model.graph.initializer}
    return {inits[n.input[2]].data_type for n in model.graph.node if n.op_type == "QuantizeLinear"}


def test_cli_default_is_auto_and_prints_the_choice(tmp_path, capsys, monkeypatch):
    src, calib = tmp_path / "cnn.onnx", tmp_path / "calib"
    onnx.save(qm.cnn(), src)
    calib.mkdir()
    for i, feed in enumerate(qm.feeds("x", (2, 3, 8, 8), 3, seed=1)):
        np.savez(calib / f"{i}.npz", **feed)
    base = ["compile", str(src), "--int8", "static", "--calib", str(calib)]
    # a CPU without VNNI: U8S8 with 7-bit weights, said on the report's first line
    monkeypatch.setattr(cpu_format, "cpu_flags", lambda *a: {"avx2", "avx512bw"})
    monkeypatch.setattr(cpu_format.platform, "machine", lambda: "x86_64")
    assert main(base + ["-o", str(tmp_path / "auto.onnx")]) == 0
    out = capsys.readouterr().out
    assert "--int8-activations auto: U8S8 (uint8 activations, 7-bit weights)" in out
    assert "AVX2 / AVX-512 without VNNI" in out and "float ops between quantized ops: 0" in out
    auto = onnx.load(tmp_path / "auto.onnx")
    assert _q_dtypes(auto) == {onnx.TensorProto.UINT8}
    # an ARM CPU with dot product: S8S8
    monkeypatch.setattr(cpu_format, "cpu_flags", lambda *a: {"asimd", "asimddp"})
    monkeypatch.setattr(cpu_format.platform, "machine", lambda: "aarch64")
    assert main(base + ["-o", str(tmp_path / "arm.onnx")]) == 0
    assert "auto: S8S8" in capsys.readouterr().out
    assert _q_dtypes(onnx.load(tmp_path / "arm.onnx")) == {onnx.TensorProto.INT8}
    # forcing still works and prints no choice
    assert main(base + ["-o", str(tmp_path / "forced.onnx"), "--int8-activations", "int8"]) == 0
    assert "auto:" not in capsys.readouterr().out
    assert _q_dtypes(onnx.load(tmp_path / "forced.onnx")) == {onnx.TensorProto.INT8}


# MobileNetV3's shapes: a HardSwish after a Conv, and an SE gate x * HardSigmoid(conv(pool(x)))
MBV3 = """<ir_version: 8, opset_import: ["": 17]>
mbv3 (float[N,3,8,8] x) => (float[N,8,8,8] y) {
  c1 = Conv<pads=[1,1,1,1]>(x, w1, b1)
  h1 = HardSwish(c1)
  c2 = Conv<pads=[1,1,1,1]>(h1, w2, b2)
  p = GlobalAveragePool(c2)
  s = Conv(p, w3, b3)
  g = HardSigmoid<alpha=0.1666667, beta=0.5>(s)
  m = Mul(c2, g)
  y = Conv<pads=[1,1,1,1]>(m, w4, b4)
}"""


def mbv3(seed=0):
    model = onnx.parser.parse_model(MBV3)
    rng = np.random.default_rng(seed)
    for name, shape in {"w1": (8, 3, 3, 3), "b1": (8,), "w2": (8, 8, 3, 3), "b2": (8,), "w3": (8, 8, 1, 1),
                        "b3": (8,), "w4": (8, 8, 3, 3), "b4": (8,)}.items():
        scale = 0.3 if name.startswith("b") else np.sqrt(2.0 / np.prod(shape[1:]))
        model.graph.initializer.append(numpy_helper.from_array((rng.normal(0, 1, shape) * scale).astype(np.float32),
                                                               name))
    onnx.checker.check_model(model, full_check=True)
    return model


def test_hard_sigmoid_rewrite_is_float_exact():
    model = mbv3()
    rewritten, count = hard_sigmoid_as_conv(model)
    assert count == 2
    ops = [n.op_type for n in rewritten.graph.node]
    assert "HardSigmoid" not in ops and "HardSwish" not in ops and ops.count("Conv") == 6
    for feed in qm.feeds("x", (2, 3, 8, 8), 3, seed=4):
        np.testing.assert_allclose(_ort(rewritten).run(None, feed)[0], _ort(model).run(None, feed)[0],
                                   rtol=1e-5, atol=1e-6)
    assert hard_sigmoid_as_conv(rewritten)[1] == 0  # idempotent
    assert hard_sigmoid_as_conv(model, exclude=["HardSwish"])[1] == 1  # --int8-exclude keeps it as it is


def test_hard_sigmoid_before_the_output_stays():
    # a HardSigmoid after the last layer: rewriting it would make its Conv the 'final layer'
    text = MBV3.replace("float[N,8,8,8] y", "float[N,8,1,1] y").replace(
        "  m = Mul(c2, g)\n  y = Conv<pads=[1,1,1,1]>(m, w4, b4)\n", "  y = Identity(g)\n")
    model = onnx.parser.parse_model(text)
    model.graph.initializer.extend(t for t in mbv3().graph.initializer if t.name != "w4" and t.name != "b4")
    _, count = hard_sigmoid_as_conv(model)
    assert count == 1  # the HardSwish inside, not the HardSigmoid at the end


def test_u8s8_keeps_mobilenet_gates_in_integer_kernels():
    model = mbv3()
    calib, evals = qm.feeds("x", (2, 3, 8, 8), 6, seed=1), qm.feeds("x", (2, 3, 8, 8), 3, seed=9)
    q, report = lossy.int8_static(model, calib, activations="uint8", weight_bits=8, keep_final=False,
                                  ort_report=True)
    assert "2 HardSigmoid/HardSwish rewritten" in report.format_choice
    assert "float ops between quantized ops: 0" in report.ort_fusion
    fused = fusion_summary(q)
    assert sum(fused.float_between.values()) == 0 and fused.quantize == 1  # the input's Q only
    assert "HardSigmoid" not in {n.op_type for n in ort_optimized(q).graph.node}
    # the same quantizer without the rewrite leaves each gate as a float island in ORT
    plain, _ = lossy.int8_static(model, calib, activations="int8", weight_bits=8, keep_final=False)
    assert fusion_summary(plain).float_between["HardSigmoid"] >= 1
    errs = [qm.cosine_err(_ort(model).run(None, f)[0], _ort(q, optimize=True).run(None, f)[0]) for f in evals]
    assert max(errs) < 2e-3  # measured ~3e-4


# PP-OCRv4's "learnable affine block": an activation times a scalar plus a scalar, between Convs
AFFINE = """<ir_version: 8, opset_import: ["": 17]>
affine (float[N,3,8,8] x) => (float[N,8,8,8] y) {
  c1 = Conv<pads=[1,1,1,1]>(x, w1, b1)
  m = Mul(scale, c1)
  a = Add(m, shift)
  n = Mul(a, negative)
  y = Conv<pads=[1,1,1,1]>(n, w2, b2)
}"""


def affine_model(shift=0.3):
    model = onnx.parser.parse_model(AFFINE)
    rng = np.random.default_rng(5)
    values = {"w1": rng.normal(0, 0.3, (8, 3, 3, 3)), "b1": rng.normal(0, 0.1, (8,)),
              "w2": rng.normal(0, 0.2, (8, 8, 3, 3)), "b2": rng.normal(0, 0.1, (8,)),
              "scale": np.array([0.7]), "shift": np.array([shift]), "negative": np.array([-1.3])}
    model.graph.initializer.extend(numpy_helper.from_array(v.astype(np.float32), k) for k, v in values.items())
    onnx.checker.check_model(model, full_check=True)
    return model


@pytest.mark.parametrize("acts", ["uint8", "int8"])
def test_scalar_affine_ops_fold_into_quantization_parameters(acts):
    from graphopt.lossy.calibrate import calibrate
    from graphopt.passes.quantize import apply_static, plan_static
    from graphopt.passes.quantize.qdq_fold import fold_scalar_affine
    model = affine_model()
    calib, evals = qm.feeds("x", (2, 3, 8, 8), 6, seed=1), qm.feeds("x", (2, 3, 8, 8), 4, seed=8)
    ranges = calibrate(model, plan_static(model, keep_final=False, const_operands=True).tensors, calib)
    plain, _ = apply_static(model, ranges, keep_final=False, activations=acts, const_operands=acts == "uint8",
                            weight_bits=8)
    folded, count = fold_scalar_affine(plain)
    onnx.checker.check_model(folded, full_check=True)
    ops = [n.op_type for n in folded.graph.node]
    if acts == "uint8":  # Mul 0.7 and Add 0.3 fold; Mul by -1.3 would flip the order of the integers: kept
        assert count == 2 and ops.count("Mul") == 1 and "Add" not in ops
    else:  # S8S8 keeps constant-operand ops float: no Q after the Mul 0.7 / Add 0.3, nothing to fold
        assert count == 0 and ops.count("Mul") == 2 and ops.count("Add") == 1
    for feed in evals:  # against the float model (ORT): no worse than the unfolded quantized model
        want = _ort(model).run(None, feed)[0]
        err_plain = np.abs(_ort(plain).run(None, feed)[0] - want).max()
        err_folded = np.abs(_ort(folded).run(None, feed)[0] - want).max()
        assert err_folded <= err_plain * 1.5 + 1e-6 and err_folded < 0.05 * np.abs(want).max()


def test_add_fold_refused_when_the_zero_point_leaves_the_type():
    from graphopt.passes.quantize.qdq_fold import fold_scalar_affine
    model = affine_model(shift=1000.0)  # 1000 / scale is far beyond 255 steps
    q, _ = lossy.int8_static(model, qm.feeds("x", (2, 3, 8, 8), 4, seed=1), activations="uint8", keep_final=False)
    assert "Add" in [n.op_type for n in q.graph.node]
    assert fold_scalar_affine(q)[1] == 0
