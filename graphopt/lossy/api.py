"""Python API of the lossy steps (opt-in, run after the lossless pipeline).

    model, report = graphopt.lossy.int8_static(model, calib_feeds, method="entropy")
    model, report = graphopt.lossy.int8_dynamic(model)
    model, report = graphopt.lossy.with_budget(model, "static", eval_feeds, budget=0.01, calib=...)

Each returns the new ModelProto (checked with onnx.checker) and a LossyReport: per-layer SQNR of
the quantized weights (and activations for static), size before/after, agreement with the float model.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from graphopt.lossy import budget as _budget
from graphopt.lossy.calibrate import calibrate, feeds_list, iter_feeds
from graphopt.errors import UsageError, VerificationFailed


@dataclass
class LossyReport:
    mode: str
    weight_sqnr: dict = field(default_factory=dict)
    activation_sqnr: dict = field(default_factory=dict)
    quantized: list = field(default_factory=list)
    kept_float: dict = field(default_factory=dict)
    size_before: int = 0
    size_after: int = 0
    agreement: dict = field(default_factory=dict)   # metric -> error vs float, and on which data
    table: str = ""
    format_choice: str = ""   # what --int8-activations auto chose for this CPU, and why
    ort_fusion: str = ""      # what ONNX Runtime fuses of the result (integer kernels, float ops left between)

    def to_text(self) -> str:
        lines = [self.format_choice] if self.format_choice else []
        lines += [f"{self.mode}: {len(self.quantized)} node(s) quantized, {len(self.kept_float)} kept float; "
                 f"size {self.size_before / 2**20:.2f} MiB -> {self.size_after / 2**20:.2f} MiB "
                 f"({self.size_before / max(self.size_after, 1):.2f}x smaller)"]
        for name, reason in list(self.kept_float.items())[:20]:
            lines.append(f"  float  {name}: {reason}")
        if self.weight_sqnr:
            lines.append(f"  {'weight SQNR dB':>14}  layer")
            for name, db in sorted(self.weight_sqnr.items(), key=lambda kv: kv[1])[:30]:
                lines.append(f"  {db:>14.1f}  {name}")
        if self.activation_sqnr:
            lines.append(f"  {'activation SQNR dB':>18}  tensor (lowest 30)")
            for name, db in sorted(self.activation_sqnr.items(), key=lambda kv: kv[1])[:30]:
                lines.append(f"  {db:>18.1f}  {name}")
        for k, v in self.agreement.items():
            lines.append(f"  agreement with float: {k} = {v}")
        if self.ort_fusion:
            lines.append(f"  {self.ort_fusion}")
        if self.table:
            lines.append(self.table)
        return "\n".join(lines)


def _checked(model: onnx.ModelProto) -> onnx.ModelProto:
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as e:
        raise VerificationFailed(f"the quantized model fails onnx.checker: {e}") from None
    return model


def int8_friendly(model: onnx.ModelProto, activations: str, exclude=()) -> tuple[onnx.ModelProto, int]:
    """The float-exact rewrites that help ORT stay in integer kernels for this activation type:
    with uint8 (U8S8, where ORT fuses a depthwise Conv) HardSigmoid/HardSwish become a depthwise
    1x1 Conv + Clip (passes/quantize/int8_friendly.py). Idempotent; (model, nodes rewritten)."""
    if activations != "uint8":
        return model, 0
    from graphopt.passes.quantize.int8_friendly import hard_sigmoid_as_conv
    return hard_sigmoid_as_conv(model, exclude)


def int8_static(model: onnx.ModelProto, calib, method: str = "mse", percentile: float = 99.99,
                exclude=(), keep_final: bool = True, progress=None, ranges: dict | None = None,
                fmt: str = "qdq", activations: str = "auto", weight_bits: int | None = None,
                ort_report: bool = False, bias_correction: bool = False, smooth: float | None = None,
                executor=None):
    """activations: "auto" (the format ONNX Runtime runs fastest on this CPU, see
    passes/quantize/cpu_format.py), or "int8" (S8S8) / "uint8" (U8S8) forced.
    ort_report: add what ONNX Runtime fuses of the result to the report (builds one ORT session).
    bias_correction: fold the mean output shift of each layer's int8 weights into its bias
    (passes/quantize/bias_correction.py; reads the calibration data once more).
    smooth: SmoothQuant alpha (0..1): move activation outliers of normalized MatMul inputs into the
    weights (passes/quantize/smooth.py; reads the calibration data once more).
    executor (graphopt.distributed): calibrate on its workers, shards merged exactly."""
    from graphopt.passes.quantize import apply_static, plan_static
    from graphopt.passes.quantize.cpu_format import resolve
    from graphopt.passes.quantize.common import ModelView, check_exclude_names
    from graphopt.passes.quantize.static import activation_sqnr
    if calib is None and ranges is None:
        raise UsageError("--int8 static needs calibration data (--calib DATA)")
    check_exclude_names(ModelView(model), exclude)
    if activations not in ("auto", "int8", "uint8"):
        raise UsageError(f"--int8-activations must be auto, int8 or uint8, got '{activations}'")
    activations, weight_bits, choice = resolve(activations, weight_bits)
    const_operands = activations == "uint8"  # the fast U8S8 path: Add/Mul with constants run int8 too
    original = model
    model, rewritten = int8_friendly(model, activations, exclude)
    rereadable = isinstance(calib, (str, Path, list, tuple))
    smoothed = 0
    if smooth is not None:
        if not 0.0 <= smooth <= 1.0:
            raise UsageError(f"--smoothquant alpha must be within [0, 1], got {smooth}")
        if not rereadable:
            raise UsageError("SmoothQuant reads the calibration data twice: give a folder, an .npz or a list")
        from graphopt.passes.quantize.smooth import smooth_matmuls
        model, smoothed = smooth_matmuls(model, iter_feeds(calib, model), smooth)
    plan = plan_static(model, exclude=exclude, keep_final=keep_final, const_operands=const_operands)
    corrected = 0
    if bias_correction:
        if not rereadable:
            raise UsageError("bias correction reads the calibration data twice: give a folder, an .npz or a list")
        from graphopt.passes.quantize.bias_correction import correct_biases
        bits = weight_bits if weight_bits is not None else (7 if activations == "uint8" else 8)
        model, corrected = correct_biases(model, iter_feeds(calib, model), bits, set(plan.nodes))
    if ranges is None:
        ranges = _ranges(model, plan.tensors, calib, method, percentile, progress, executor)
    from graphopt.passes.quantize.shared_ranges import share_ranges
    ranges = share_ranges(model, ranges)  # Reshape/MaxPool/... keep one scale, so ORT runs them on int8
    q, rep = apply_static(model, ranges, exclude=exclude, keep_final=keep_final, activations=activations,
                          const_operands=const_operands, weight_bits=weight_bits)
    from graphopt.passes.quantize.qdq_fold import fold_scalar_affine
    q, folded = fold_scalar_affine(q)  # scalar Mul/Add between quantized tensors: new scale/zero point instead
    if fmt == "qoperator":
        from graphopt.passes.quantize.qoperator import to_qoperator
        q, _ = to_qoperator(q)
    elif fmt != "qdq":
        raise UsageError(f"unknown --int8-format '{fmt}' (qdq or qoperator)")
    form = ("QDQ" if fmt == "qdq" else "QOperator") + (" S8S8" if activations == "int8" else " U8S8") \
        + (f", {weight_bits}-bit weights" if weight_bits is not None else "")
    report = LossyReport(f"int8 static ({form})", rep.weights, {}, rep.nodes, rep.kept_float,
                         original.ByteSize(), q.ByteSize())
    report.format_choice = "\n".join(filter(None, [
        choice.to_text() if choice else "",
        f"  {rewritten} HardSigmoid/HardSwish rewritten as depthwise 1x1 Conv + Clip (integer kernels in ORT)"
        if rewritten else "",
        f"  {folded} scalar Mul/Div/Add between quantized tensors folded into scale / zero point" if folded else "",
        f"  bias correction: {corrected} layer bias(es) absorb the mean shift of their int8 weights"
        if bias_correction else "",
        f"  SmoothQuant (alpha {smooth}): {smoothed} normalized MatMul input(s) rescaled" if smooth is not None else ""]))
    if ort_report:
        from graphopt.passes.quantize.ort_fusion import fusion_summary
        fused = fusion_summary(q)
        report.ort_fusion = fused.to_text() if fused else "ONNX Runtime could not load the model: no fusion summary"
    # activation SQNR on the first calibration feed (when the data can be read twice: not a generator)
    if isinstance(calib, (str, Path, list, tuple)) and plan.tensors:
        from graphopt.lossy.calibrate import tensor_runner
        first = next(iter_feeds(calib, model))
        values = dict(zip(plan.tensors, tensor_runner(model, plan.tensors, "ort")(first)))
        report.activation_sqnr = activation_sqnr({t: np.asarray(v) for t, v in values.items()}, ranges, activations)
    return _checked(q), report


def _ranges(model, tensors, calib, method, percentile, progress, executor):
    if executor is None or executor.workers < 2:
        return calibrate(model, tensors, calib, method, percentile, progress)
    from graphopt.lossy.calib_shards import calibrate_sharded
    return calibrate_sharded(model, tensors, calib, method, percentile, executor, progress)


def int8_dynamic(model: onnx.ModelProto, exclude=(), keep_final: bool = False, progress=None):
    from graphopt.passes.quantize import apply_dynamic
    from graphopt.passes.quantize.common import ModelView, check_exclude_names
    check_exclude_names(ModelView(model), exclude)
    q, rep = apply_dynamic(model, exclude=exclude, keep_final=keep_final)
    report = LossyReport("int8 dynamic", rep.weights, {}, rep.nodes, rep.kept_float, model.ByteSize(), q.ByteSize())
    return _checked(q), report


def agreement(model: onnx.ModelProto, quantized: onnx.ModelProto, feeds: list[dict], where: str) -> dict:
    refs = _budget.reference_outputs(model, feeds)
    out = {}
    for name in ("top1", "cosine", "max-rel-error"):
        out[f"{name} error ({where}, {len(feeds)} feeds)"] = round(
            _budget.error(quantized, feeds, refs, _budget.metric_fn(name)), 6)
    return out


def with_budget(model: onnx.ModelProto, mode: str, eval_data, budget: float, metric: str = "top1",
                best_effort: bool = False, calib=None, method: str = "mse", percentile: float = 99.99,
                exclude=(), keep_final=None, progress=None, fmt: str = "qdq", activations: str = "auto",
                executor=None):
    """Search fallbacks until the error on eval_data stays within `budget`; returns the fastest
    candidate inside it (BudgetNotMet when none is, unless best_effort). executor (graphopt.distributed):
    calibration shards and candidate x data-shard evaluations run on its workers, same results."""
    if eval_data is None:
        raise UsageError("--accuracy-budget needs evaluation data (--eval DATA)")
    if budget < 0:
        raise UsageError(f"--accuracy-budget must be >= 0, got {budget}")
    metric_f = _budget.metric_fn(metric)
    feeds = feeds_list(eval_data, model, "evaluation")
    if calib is not None and isinstance(calib, (str,)) and isinstance(eval_data, str) and calib == eval_data:
        raise UsageError("--eval must be held-out data, not the calibration data")
    refs = _budget.reference_outputs(model, feeds)
    say = progress or (lambda msg: None)
    if mode == "static":
        from graphopt.passes.quantize import plan_static
        from graphopt.passes.quantize.cpu_format import resolve
        activations, weight_bits, choice = resolve(activations)  # once, so every candidate has one format
        if choice:
            say(choice.to_text())
        kf = True if keep_final is None else keep_final
        source, _ = int8_friendly(model, activations, exclude)  # float-exact: refs above stay valid
        plan = plan_static(source, exclude=exclude, keep_final=kf, const_operands=activations == "uint8")
        ranges = _ranges(source, plan.tensors, calib, method, percentile, progress, executor) \
            if calib is not None else None
        if ranges is None:
            raise UsageError("--int8 static needs calibration data (--calib DATA)")
        first, first_report = int8_static(source, calib, exclude=exclude, keep_final=kf, ranges=ranges,
                                          activations=activations, weight_bits=weight_bits)
        layers = list(first_report.quantized)  # weighted nodes and the int8 Add/Concat/pool islands

        def build(fallback):
            return int8_static(source, None, exclude=list(exclude) + list(fallback), keep_final=kf, ranges=ranges,
                               fmt=fmt, activations=activations, weight_bits=weight_bits)[0]
    elif mode == "dynamic":
        kf = False if keep_final is None else keep_final
        first, first_report = int8_dynamic(model, exclude=exclude, keep_final=kf)
        layers = list(first_report.quantized)

        def build(fallback):
            return int8_dynamic(model, exclude=list(exclude) + list(fallback), keep_final=kf)[0]
    else:
        raise UsageError(f"unknown --int8 mode '{mode}'")
    if not layers:
        raise UsageError("nothing to quantize: no Conv/MatMul/Gemm with constant weights outside the exclusions")
    evaluate = None
    if executor is not None and executor.workers > 1:
        from graphopt.lossy.parallel_eval import evaluator
        evaluate = evaluator(executor, metric, progress)
    cands = _budget.search(build, layers, feeds, refs, metric_f, budget, say, evaluate=evaluate)
    table = _budget.table(cands, _budget.latency_ms(model, feeds[0]), model.ByteSize(), budget)
    chosen = _budget.choose(cands, budget, best_effort)  # raises BudgetNotMet -> nothing written
    final, report = (int8_static(source, None, exclude=list(exclude) + chosen.float_layers, keep_final=kf,
                                 ranges=ranges, fmt=fmt, activations=activations, weight_bits=weight_bits)
                     if mode == "static"
                     else int8_dynamic(model, exclude=list(exclude) + chosen.float_layers, keep_final=kf))
    report.table = table + f"\nchosen: '{chosen.name}' ({metric} error {chosen.error:.4g} <= {budget:g})" \
        if chosen.error <= budget else table + f"\nbest effort: '{chosen.name}' (error {chosen.error:.4g} > {budget:g})"
    report.agreement = {f"{metric} error (eval, {len(feeds)} feeds)": round(chosen.error, 6)}
    if mode == "static" and choice:
        report.format_choice = "\n".join(filter(None, [choice.to_text(), report.format_choice]))
    return final, report

