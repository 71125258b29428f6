"""The compile API: load -> PassManager -> export, with a report of what happened."""
from __future__ import annotations

import importlib.util
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import onnx

from graphopt import ir
from graphopt.compiler import targets
from graphopt.errors import UsageError
from graphopt.ir.limits import DEFAULT as DEFAULT_LIMITS
from graphopt.ir.limits import Deadline, Limits
from graphopt.compiler.pass_manager import DEFAULT_FOLD_LIMIT, PassManager
from graphopt.compiler.report import CompileReport, summarize


def load_builtin_passes() -> None:
    import graphopt.passes  # noqa: F401  (importing registers the built-in passes, in pipeline order)


def load_plugin(path) -> None:
    """Import a Python file so its @register_pass / register_rules calls take effect."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"plugin '{path}' not found")
    name = f"graphopt_plugin_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        raise UsageError(f"plugin '{path}' failed to load: {e.__class__.__name__}: {e}") from None


@dataclass
class CompileResult:
    model: onnx.ModelProto
    report: CompileReport


def compile_model(model_or_path, level: int = 2, passes=None, disable=(), verify_each: bool = False,
                  print_after=(), bisect_limit: int | None = None, trace=(), fold_limit: int = DEFAULT_FOLD_LIMIT,
                  plugins=(), max_iterations: int = 8, progress=None, verify_options: dict | None = None,
                  target: str | None = None, opset: int | None = None, limits: Limits | None = None
                  ) -> CompileResult:
    """Optimize a model; returns the new ModelProto and a CompileReport.

    target: 'onnx' (default, standard ops), 'ort' (ONNX Runtime contrib ops) or 'graphopt' (ai.graphopt
    fused ops for graphopt.Session); opset: raise the model to this opset first (see graphopt.targets)."""
    load_builtin_passes()
    for plugin in plugins:
        load_plugin(plugin)
    ir.graph.reset_fresh_names()  # names of new nodes: the same in every process, for every rerun
    start = time.perf_counter()
    target = targets.check_target(target, verify_each)
    limits = (limits or DEFAULT_LIMITS).with_(fold_bytes=None if fold_limit == DEFAULT_FOLD_LIMIT else fold_limit)
    deadline = Deadline(limits.time_limit)
    original = targets.raise_opset(ir.load_model(model_or_path, limits=limits), opset)
    graph = ir.load(original, limits=limits, validated=True)
    manager = PassManager(level=level, passes=passes, disable=disable, verify_each=verify_each,
                          print_after=print_after, bisect_limit=bisect_limit, max_iterations=max_iterations,
                          fold_limit=limits.fold_bytes, trace=trace, progress=progress, verify_options=verify_options,
                          options={"target": target, "opset": targets.model_opset(original),
                                   "limits": limits, "deadline": deadline})
    ctx = manager.run(graph, original)
    model = ir.export(graph, original)
    _keep_functions(model, original)
    report = CompileReport(before=summarize(original), after=summarize(model),
                           passes=[asdict(r) for r in manager.records], seconds=time.perf_counter() - start,
                           trace=ctx.trace_lines, near_misses=ctx.near_misses, printed=manager.printed)
    return CompileResult(model, report)


def compile(model_or_path, level: int = 2, passes=None, disable=(), verify_each: bool = False, **options
            ) -> onnx.ModelProto:
    """graphopt.compile(model_or_path, level=2, ...) -> optimized onnx.ModelProto."""
    return compile_model(model_or_path, level=level, passes=passes, disable=disable, verify_each=verify_each,
                         **options).model


def _keep_functions(model: onnx.ModelProto, original: onnx.ModelProto) -> None:
    """Model-local functions (custom-domain ops defined in the model) are carried over untouched."""
    have = {(f.domain, f.name) for f in model.functions}
    model.functions.extend(f for f in original.functions if (f.domain, f.name) not in have)
    used = {(o.domain) for o in model.opset_import}
    for o in original.opset_import:
        if o.domain not in used and any(f.domain == o.domain for f in model.functions):
            model.opset_import.append(o)
