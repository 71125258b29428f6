"""Output targets and the output opset: which ops the compiled model may contain.

    onnx      standard ops only (default); a fused standard op appears only where the opset has it
    ort       also ONNX Runtime's com.microsoft contrib ops (FusedConv, SkipLayerNormalization, ...)
    graphopt  also graphopt's own ai.graphopt fused ops, which only graphopt.Session executes

The target and opset reach passes as ctx.options["target"] / ctx.options["opset"]; the fusion
passes read them through graphopt.passes.fusion.lower. Raising the opset happens here, once, before
any pass runs, with onnx.version_converter (a model it cannot convert is refused, not half-converted).
"""
from __future__ import annotations

import onnx

from graphopt.errors import UsageError

TARGETS = ("onnx", "ort", "graphopt")
DEFAULT_TARGET = "onnx"
MAX_OPSET = onnx.defs.onnx_opset_version()


def check_target(target: str | None, verify_each: bool = False) -> str:
    target = target or DEFAULT_TARGET
    if target not in TARGETS:
        raise UsageError(f"unknown target '{target}' (choose from {', '.join(TARGETS)})")
    if verify_each and target == "graphopt":
        raise UsageError("--verify-each compares in ONNX Runtime, which cannot run --target graphopt's "
                         "ai.graphopt ops (use --target onnx or ort with --verify-each)")
    return target


def model_opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)


def raise_opset(model: onnx.ModelProto, opset: int | None, source: str = "the model") -> onnx.ModelProto:
    """The model converted to `opset` (returned unchanged when it already has it).

    Lowering an opset is refused: ops removed or redefined since cannot always be expressed, and
    `--opset` exists to allow newer fused ops, not to target old runtimes."""
    if opset is None:
        return model
    have = model_opset(model)
    if not 1 <= opset <= MAX_OPSET:
        raise UsageError(f"--opset {opset} is outside 1..{MAX_OPSET} (the installed onnx package's range)")
    if opset < have:
        raise UsageError(f"--opset {opset} is below {source}'s opset {have}; graphopt only raises opsets")
    if opset == have:
        return model
    if any(o.domain in ("", "ai.onnx") for f in model.functions for o in f.opset_import):
        # onnx.version_converter drops model-local functions, and their bodies must import the model's opset
        names = ", ".join(sorted({f"{f.domain}.{f.name}" for f in model.functions}))
        raise UsageError(f"cannot raise {source} from opset {have} to {opset}: its model-local functions "
                         f"({names}) use standard ops, which onnx.version_converter does not convert")
    from onnx import version_converter
    try:
        converted = version_converter.convert_version(model, opset)
        onnx.checker.check_model(converted)
    except Exception as e:  # the converter raises RuntimeError/ValidationError with C++ messages
        first = str(e).strip().splitlines()[0] if str(e).strip() else e.__class__.__name__
        raise UsageError(f"cannot raise {source} from opset {have} to {opset}: {first}") from None
    needed = onnx.helper.find_min_ir_version_for(list(converted.opset_import), ignore_unknown=True)
    converted.ir_version = max(converted.ir_version, needed)
    return converted


# ---------------------------------------------------------------- command line (graphopt compile)

def add_target_arguments(parser) -> None:
    g = parser.add_argument_group("output target")
    g.add_argument("--target", choices=TARGETS, default=DEFAULT_TARGET,
                   help="ops the output may use: onnx = standard only (default), ort = + ONNX Runtime "
                        "com.microsoft contrib ops, graphopt = + ai.graphopt fused ops (graphopt run)")
    g.add_argument("--opset", type=int, metavar="N",
                   help="raise the model to opset N first (onnx.version_converter), e.g. 20 for Gelu, "
                        "23 for Attention/RMSNormalization")


def target_options(args) -> dict:
    return {"target": getattr(args, "target", None), "opset": getattr(args, "opset", None)}
