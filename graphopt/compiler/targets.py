"""Output targets and the output opset: which ops the compiled model may contain.

    onnx      standard ops only (default); a fused standard op appears only where the opset has it
    ort       also ONNX Runtime's com.microsoft contrib ops (FusedConv, SkipLayerNormalization, ...)
    graphopt  also graphopt's own ai.graphopt fused ops, which only graphopt.Session executes

The target and opset reach passes as ctx.options["target"] / ctx.options["opset"].

Fused ops: a fusion rule builds one *canonical* op in the ai.graphopt domain (`emit(m, kind, ...)`);
the file that owns the op registers how each target spells it (`register_spelling(kind, target,
spell, min_opset)`), and `register_rules(..., produces={rule: kind})` switches a rule off where the
target cannot hold its op and spells the fused nodes after the rules ran (spell_all). Raising the opset happens here, once, before
any pass runs, with onnx.version_converter (a model it cannot convert is refused, not half-converted).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import onnx
import onnx_graphsurgeon as gs

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


# ---------------------------------------------------------------- fused ops per target

FUSED = "ai.graphopt"
ORT = "com.microsoft"


@dataclass
class Spelling:
    min_opset: int
    spell: Callable[[gs.Graph, gs.Node, int], None]  # edits the canonical node in place (may add nodes)


SPELLINGS: dict[tuple[str, str], Spelling] = {}  # (kind, target) -> how to write it
NO_KERNEL: set[str] = set()  # kinds graphopt.Session cannot run: off for target graphopt too


def register_spelling(kind: str, target: str, spell: Callable, min_opset: int = 1) -> None:
    SPELLINGS[(kind, target)] = Spelling(min_opset, spell)


def target_of(ctx) -> str:
    return ctx.options.get("target") or DEFAULT_TARGET


def unavailable(kind: str, ctx) -> str | None:
    """Why the target/opset cannot hold a fused `kind` (None when it can)."""
    target = target_of(ctx)
    if target == "graphopt" and (kind not in NO_KERNEL or has_kernel(kind)):
        return None
    # a graphopt spelling only refines a canonical op the runtime can run: it never makes one available
    spelling = SPELLINGS.get((kind, target)) if target != "graphopt" else None
    if spelling is None:
        holders = [t for t in TARGETS if t != target and ((kind, t) in SPELLINGS if t != "graphopt"
                                                          else kind not in NO_KERNEL or has_kernel(kind))]
        return f"target '{target}' has no fused {kind}" + (f" (--target {' or '.join(holders)} has)" if holders else "")
    if ctx.opset < spelling.min_opset:
        return (f"target '{target}' has {kind} only from opset {spelling.min_opset}, the model has "
                f"{ctx.opset} (--opset {spelling.min_opset} raises it)")
    return None


def has_kernel(kind: str) -> bool:
    """graphopt.Session can run the canonical `kind` (a kernel registered for the ai.graphopt domain)."""
    try:
        import graphopt.kernels.cpu  # noqa: F401  (registers the kernels)
        from graphopt.kernels import registry
    except ImportError:
        return False
    return registry.lookup(FUSED, kind, 1) is not None


def emit(m, kind: str, inputs, attrs=None, **out):
    """The canonical fused node, built through the match (the driver inserts it)."""
    return m.op(kind, inputs, attrs, domain=FUSED, **out)


def spell_all(graph: gs.Graph, ctx) -> int:
    """Spell the canonical nodes for the target; the number of nodes changed. A graphopt spelling
    keeps the node canonical, so it runs again after every later fusion pass: it must be idempotent
    and return whether it changed the graph (an ort/onnx spelling always does, returning None)."""
    target, count = target_of(ctx), 0
    for node in list(graph.nodes):
        if node.domain == FUSED and (node.op, target) in SPELLINGS:
            done = SPELLINGS[(node.op, target)].spell(graph, node, ctx.opset)
            count += 1 if done is None else int(bool(done))
    return count
