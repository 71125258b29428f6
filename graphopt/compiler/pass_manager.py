"""Passes, the registry that makes them usable from the CLI, and the PassManager that runs them.

    @register_pass("my-pass", level=2)
    def my_pass(graph, ctx) -> PassResult: ...

Selection follows TVM's rule: a disabled pass never runs, a requested pass always runs, otherwise a
pass runs when its level <= the optimization level. Opt-in passes (lossy ones) run only on request.
"""
from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

import onnx
import onnx_graphsurgeon as gs

from graphopt import ir
from graphopt.errors import LimitExceeded, UsageError, VerificationFailed
from graphopt.compiler import targets
from graphopt.compiler.rewrite import Rule, RuleStats, apply_rules

DEFAULT_FOLD_LIMIT = 64 << 20


@dataclass
class PassResult:
    changed: bool
    stats: dict = field(default_factory=dict)


@dataclass
class PassInfo:
    name: str
    level: int
    run: Callable[[gs.Graph, "PassContext"], PassResult]
    doc: str = ""
    per_graph: bool = True  # run once per (sub)graph, innermost first; False: once on the main graph
    opt_in: bool = False
    origin: str = "graphopt"


REGISTRY: dict[str, PassInfo] = {}


def register_pass(name: str, level: int = 1, per_graph: bool = True, opt_in: bool = False, doc: str | None = None):
    """Decorator: register a function `(graph, ctx) -> PassResult` (or a class with such a `run`)."""

    def wrap(fn):
        run = fn().run if isinstance(fn, type) else fn
        text = doc if doc is not None else (fn.__doc__ or "").strip().splitlines()[0:1]
        text = text if isinstance(text, str) else (text[0] if text else "")
        REGISTRY[name] = PassInfo(name, level, run, text.strip(), per_graph, opt_in,
                                  origin=getattr(fn, "__module__", "graphopt"))
        return fn

    return wrap


def register_rules(name: str, rules: list[Rule], level: int = 1, doc: str = "",
                   produces: dict[str, str] | None = None) -> None:
    """Register a rule set as a pass: the driver applies it to a fixed point in every (sub)graph.

    produces: rule name -> the canonical fused op (graphopt.compiler.targets) the rule emits. Such a
    rule runs only where the output target can hold that op (--trace says why not), and the pass
    spells its fused nodes for the target after the rules ran."""
    produces = produces or {}

    def run(graph, ctx):
        allowed, off = [], {}
        for rule in rules:
            why = targets.unavailable(produces[rule.name], ctx) if rule.name in produces else None
            if why:
                off[rule.name] = why
            else:
                allowed.append(rule)
        stats = apply_rules(graph, allowed, ctx.opset, trace=ctx.trace, stats=RuleStats())
        traced = set(ctx.trace)
        for rule in rules:
            if rule.name in off and ({rule.name, "all"} & traced):
                root = next((n for n in graph.nodes if n.op in rule.pattern.ops), None)
                if root is not None:
                    ctx.near_misses[rule.name] = (0, root.name or root.op, off[rule.name])
        ctx.trace_lines.extend(stats.trace)
        for rule_name, near in stats.near_miss.items():  # keep the nearest miss over all iterations
            if rule_name not in ctx.near_misses or near[0] >= ctx.near_misses[rule_name][0]:
                ctx.near_misses[rule_name] = near
        # a graphopt spelling may change the graph with no rule hit in this pass
        spelled = targets.spell_all(graph, ctx) if produces else 0
        return PassResult(stats.total > 0 or spelled > 0, dict(stats.hits))

    run.__module__ = rules[0].rewrite.__module__ if rules else "graphopt"
    REGISTRY[name] = PassInfo(name, level, run, doc, per_graph=True, origin=run.__module__)
    REGISTRY[name].rules = rules  # type: ignore[attr-defined]


def expand_trace(names) -> tuple:
    """--trace takes rule names, 'all', or pass names (standing for all the pass's rules); anything
    else is a usage error rather than a trace that silently prints nothing."""
    rules = {r.name for info in REGISTRY.values() for r in getattr(info, "rules", ())}
    out = []
    for name in names:
        info = REGISTRY.get(name)
        if name == "all" or name in rules:
            out.append(name)
        elif info is not None and getattr(info, "rules", None):
            out += [r.name for r in info.rules]
        else:
            why = "applies no rules" if info is not None else "is neither a rule nor a pass"
            raise UsageError(f"--trace {name}: '{name}' {why} (rule names: graphopt passes --rules)")
    return tuple(out)


@dataclass
class PassContext:
    """What a pass may read: options, the model's opset, and where to leave trace lines."""
    level: int = 2
    opset: int = 17
    fold_limit: int = DEFAULT_FOLD_LIMIT
    trace: tuple = ()
    trace_lines: list = field(default_factory=list)
    near_misses: dict = field(default_factory=dict)
    model: onnx.ModelProto | None = None  # the input model (metadata, functions)
    options: dict = field(default_factory=dict)  # free-form, for plugin passes

    def log(self, line: str) -> None:
        self.trace_lines.append(line)


@dataclass
class PassRecord:
    name: str
    iteration: int
    seconds: float
    changed: bool
    stats: dict
    skipped: str = ""


class PassManager:
    """Runs the selected passes in registry order, repeating until nothing changes."""

    def __init__(self, level: int = 2, passes=None, disable=(), verify_each: bool = False, print_after=(),
                 bisect_limit: int | None = None, max_iterations: int = 8, fold_limit: int = DEFAULT_FOLD_LIMIT,
                 trace=(), progress: Callable[[str], None] | None = None, verify_options: dict | None = None,
                 options: dict | None = None):
        if level not in (0, 1, 2, 3):
            raise UsageError(f"optimization level must be 0..3, got {level}")
        requested, disabled = list(passes or ()), set(disable or ())
        unknown = [p for p in requested + sorted(disabled) if p not in REGISTRY]
        if unknown:
            raise UsageError(f"unknown pass(es): {', '.join(unknown)} (see `graphopt passes`)")
        self.level, self.requested, self.disabled = level, requested, disabled
        self.verify_each, self.print_after = verify_each, set(print_after or ())
        self.bisect_limit, self.max_iterations = bisect_limit, max_iterations
        self.fold_limit, self.trace, self.progress = fold_limit, expand_trace(trace or ()), progress
        self.verify_options = verify_options or {}
        self.options = dict(options or {})  # ctx.options for every pass (e.g. target, opset)
        self.records: list[PassRecord] = []
        self.printed: list[str] = []

    def selected(self) -> list[PassInfo]:
        chosen = []
        for info in REGISTRY.values():
            if info.name in self.disabled:
                continue
            if info.name in self.requested or (not info.opt_in and info.level <= self.level):
                chosen.append(info)
        return chosen

    def run(self, graph: gs.Graph, model: onnx.ModelProto) -> PassContext:
        ctx = PassContext(level=self.level, opset=_default_opset(model), fold_limit=self.fold_limit,
                          trace=self.trace, model=model, options=dict(self.options))
        pipeline = self.selected()
        runs = 0
        for iteration in range(1, self.max_iterations + 1):
            any_change = False
            for info in pipeline:
                runs += 1
                if ctx.options.get("deadline") is not None:  # graphopt.limits.Deadline (--time-limit)
                    ctx.options["deadline"].check(f"before pass '{info.name}', iteration {iteration}")
                if self.bisect_limit is not None and runs > self.bisect_limit:
                    self.records.append(PassRecord(info.name, iteration, 0.0, False, {}, skipped=f"bisect (run #{runs})"))
                    continue
                if self.progress:
                    self.progress(f"iteration {iteration}: {info.name}")
                start = time.perf_counter()
                result = self._run_one(info, graph, ctx)
                elapsed = time.perf_counter() - start
                self.records.append(PassRecord(info.name, iteration, elapsed, result.changed, result.stats))
                if result.changed:
                    any_change = True
                    ctx.options["graph_changed"] = True
                    for g in ir.all_graphs(graph):
                        ir.toposort(g)
                    if self.verify_each:
                        self._verify(graph, model, info.name)
                if info.name in self.print_after:
                    self.printed.append(f"--- after {info.name} (iteration {iteration}) ---\n"
                                        + onnx.printer.to_text(ir.export(graph, model).graph))
            if not any_change:
                return ctx
        raise LimitExceeded(f"passes still changing the graph after {self.max_iterations} iterations "
                            f"(last changes by: {', '.join(r.name for r in self.records[-len(pipeline):] if r.changed)})")

    def _run_one(self, info: PassInfo, graph: gs.Graph, ctx: PassContext) -> PassResult:
        graphs = ir.all_graphs(graph) if info.per_graph else [graph]
        changed, stats = False, Counter()
        for g in graphs:
            result = info.run(g, ctx)
            if result is None:
                raise TypeError(f"pass '{info.name}' returned None, expected PassResult")
            changed |= result.changed
            stats.update({k: v for k, v in result.stats.items() if isinstance(v, (int, float))})
        return PassResult(changed, dict(stats))

    def _verify(self, graph: gs.Graph, original: onnx.ModelProto, pass_name: str) -> None:
        from graphopt.verify import check_model, compare_models
        candidate = ir.export(graph, original)
        try:
            check_model(candidate)
        except VerificationFailed as e:
            raise VerificationFailed(f"after pass '{pass_name}': {e}") from None
        report = compare_models(original, candidate, **self.verify_options)
        if not report.ok:
            raise VerificationFailed(f"pass '{pass_name}' changed the outputs: {report.summary()}")


def _default_opset(model: onnx.ModelProto) -> int:
    for o in model.opset_import:
        if o.domain in ("", "ai.onnx"):
            return o.version
    return 1
