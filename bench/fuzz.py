"""Differential fuzzer: random valid models, graphopt vs ONNX Runtime.

    python -m bench.fuzz --n 1000 --seed 0 [--save tests/regressions] [--max-ops 8]

Oracle: ONNX Runtime with optimizations off on the original model is the reference. Compared with it:
(a) ONNX Runtime on graphopt's output at O1/O2/O3 (and every --target compile() accepts),
(b) graphopt.Session on the original and on each output. A failing graph is minimized (outputs
dropped, nodes cut into graph inputs, while the same check still fails) and saved as
model.onnx + inputs.npz + meta.json.
"""
from __future__ import annotations

import argparse
import inspect
import json
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

import graphopt
from graphopt.errors import Unsupported
from graphopt.verify import compare_arrays, ort_session

from .fuzz_graphs import random_feed, random_model

ort.set_default_logger_severity(4)  # ORT's own error spam (see _reference_run) is not our output
LEVELS = (1, 2, 3)
TARGETS = ("onnx", "ort", "graphopt")  # tried only when compile() takes `target=`
RTOL = 1e-3  # fusions reorder float arithmetic; the scale term below covers cancellation


@dataclass
class Failure:
    key: str  # e.g. "O2:ort-mismatch", "O3/ort:compile-crash", "session:original-mismatch"
    detail: str


def _close(name, want, got) -> str:
    atol = 1e-4 * (1.0 + float(np.max(np.abs(want)))) if np.asarray(want).size else 1e-4
    err = compare_arrays(name, want, got, rtol=RTOL, atol=atol)
    return "" if err.ok else f"{name}: max abs {err.max_abs:.3g} max rel {err.max_rel:.3g} {err.note}".strip()


def _compare(names, want, got) -> str:
    return "; ".join(msg for msg in (_close(n, w, g) for n, w, g in zip(names, want, got)) if msg)


def reference(model: onnx.ModelProto, feeds: list[dict]) -> list[list[np.ndarray]]:
    sess = ort_session(model)
    names = [o.name for o in model.graph.output]
    return [sess.run(names, feed) for feed in feeds]


def compile_variants():
    """(label, options) for every level and every target the compile API knows."""
    takes_target = "target" in inspect.signature(graphopt.compile_model).parameters
    for level in LEVELS:
        if not takes_target:
            yield f"O{level}", {"level": level}
            continue
        for target in TARGETS:
            yield f"O{level}/{target}", {"level": level, "target": target}


def _reference_run(model: onnx.ModelProto, names, feeds):
    from onnx.reference import ReferenceEvaluator
    try:
        ref = ReferenceEvaluator(model)
        return [ref.run(names, feed) for feed in feeds]
    except Exception:
        return None


def check(model: onnx.ModelProto, feeds: list[dict], session: bool = True) -> tuple[list[Failure], list[str]]:
    """All oracle checks on one model; returns (failures, notes about unsupported things)."""
    failures, notes = [], []
    names = [o.name for o in model.graph.output]
    want = reference(model, feeds)
    runners = [("original", model)]
    for label, options in compile_variants():
        try:
            out = graphopt.compile(model, **options)
        except graphopt.UsageError as e:
            if "target" in str(e):
                continue  # that target does not exist (yet)
            failures.append(Failure(f"{label}:compile-error", str(e)))
            continue
        except Exception as e:
            failures.append(Failure(f"{label}:compile-crash", f"{e.__class__.__name__}: {e}"))
            continue
        runners.append((label, out))
        if options.get("target") == "graphopt":
            continue  # ai.graphopt ops run only in graphopt's own runtime
        try:
            onnx.checker.check_model(out)
        except Exception as e:
            failures.append(Failure(f"{label}:checker", str(e).splitlines()[0]))
            continue
        try:
            sess = ort_session(out)
            got = [sess.run(names, feed) for feed in feeds]
        except Exception as e:
            # ORT has bugs of its own (e.g. "Missing Input" for a value only If-subgraphs read): the
            # ONNX reference evaluator decides whether the output model itself is wrong
            got = _reference_run(out, names, feeds)
            if got is None:
                failures.append(Failure(f"{label}:ort-error", str(e).splitlines()[0][:300]))
                continue
            notes.append(f"{label}: ORT failed on a valid output, checked with onnx.reference instead")
        diff = "; ".join(_compare(names, w, g) for w, g in zip(want, got) if _compare(names, w, g))
        if diff:
            failures.append(Failure(f"{label}:ort-mismatch", diff))
    if session:
        for label, m in runners:
            try:
                sess = graphopt.Session(m)
                got = [sess.run(None, feed) for feed in feeds]
            except Unsupported as e:
                notes.append(f"session:{label}: {e}")
                continue
            except Exception as e:
                failures.append(Failure(f"session:{label}-crash", f"{e.__class__.__name__}: {str(e)[:300]}"))
                continue
            diff = "; ".join(_compare(names, w, g) for w, g in zip(want, got) if _compare(names, w, g))
            if diff:
                failures.append(Failure(f"session:{label}-mismatch", diff))
    return failures, notes


def feeds_for(model: onnx.ModelProto, seed: int) -> list[dict]:
    symbolic = any(d.dim_param for i in model.graph.input for d in i.type.tensor_type.shape.dim)
    return [random_feed(model, seed, 2)] + ([random_feed(model, seed, 3)] if symbolic else [])


# ---------------------------------------------------------------- minimization

def _prune(model: onnx.ModelProto) -> onnx.ModelProto:
    """Drop nodes, initializers and inputs that no output needs."""
    g = model.graph
    needed = {o.name for o in g.output}
    keep = []
    for node in reversed(g.node):
        if any(o in needed for o in node.output):
            keep.append(node)
            needed.update(node.input)
            for a in node.attribute:
                for sub in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
                    needed.update(i for n in sub.node for i in n.input)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.graph.node[:]
    out.graph.node.extend(reversed(keep))
    for field_name in ("initializer", "input"):
        items = [t for t in getattr(g, field_name) if t.name in needed]
        del getattr(out.graph, field_name)[:]
        getattr(out.graph, field_name).extend(items)
    return out


def _typed(model: onnx.ModelProto) -> dict:
    inferred = onnx.shape_inference.infer_shapes(model)
    return {vi.name: vi for vi in list(inferred.graph.value_info) + list(inferred.graph.output)
            + list(inferred.graph.input)}


def _cut(model: onnx.ModelProto, index: int, types: dict) -> onnx.ModelProto | None:
    """Node `index` removed: its outputs become graph inputs (fed random values)."""
    node = model.graph.node[index]
    if any(o not in types or not types[o].type.tensor_type.HasField("shape") for o in node.output if o):
        return None
    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.graph.node[index]
    out.graph.input.extend(types[o] for o in node.output if o)
    return _prune(out)


def _truncate(model: onnx.ModelProto, name: str, types: dict) -> onnx.ModelProto | None:
    if name not in types:
        return None
    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.graph.output[:]
    out.graph.output.append(types[name])
    return _prune(out)


def _feeds_ok(model, seed) -> list[dict] | None:
    """Feeds whose reference outputs are finite and whose inputs are all float (else None)."""
    if any(i.type.tensor_type.elem_type != onnx.TensorProto.FLOAT for i in model.graph.input):
        return None
    feeds = feeds_for(model, seed)
    try:
        outs = reference(model, feeds)
    except Exception:
        return None
    return feeds if all(np.isfinite(o).all() for r in outs for o in r if o.dtype.kind == "f") else None


def minimize(model: onnx.ModelProto, seed: int, key: str, budget: int = 150):
    """Smaller model that still fails with the same key; returns (model, feeds)."""
    def still_fails(candidate):
        try:
            onnx.checker.check_model(candidate)
        except Exception:
            return None
        feeds = _feeds_ok(candidate, seed)
        if feeds is None:
            return None
        try:
            failures, _ = check(candidate, feeds, session=key.startswith("session"))
        except Exception:
            return None
        return feeds if any(f.key == key for f in failures) else None

    best, best_feeds = model, feeds_for(model, seed)
    calls, changed = 0, True
    while changed and calls < budget:
        changed = False
        try:
            types = _typed(best)
        except Exception:
            break
        names = [o for n in best.graph.node for o in n.output if o]
        candidates = [_truncate(best, n, types) for n in names] if len(best.graph.node) > 1 else []
        candidates += [_cut(best, i, types) for i in range(len(best.graph.node))]
        for cand in candidates:
            if cand is None or len(cand.graph.node) >= len(best.graph.node) or not cand.graph.node:
                continue
            calls += 1
            feeds = still_fails(cand)
            if feeds is not None:
                best, best_feeds, changed = cand, feeds, True
                break
            if calls >= budget:
                break
    return best, best_feeds


def save_case(folder: Path, model, feeds, meta: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(folder / "model.onnx"))
    np.savez(folder / "inputs.npz", **{f"{i}/{k}": v for i, feed in enumerate(feeds) for k, v in feed.items()})
    (folder / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return folder


def load_case(folder: Path):
    model = onnx.load_model(str(folder / "model.onnx"))
    data = np.load(folder / "inputs.npz")
    feeds: dict[int, dict] = {}
    for key in data.files:
        i, name = key.split("/", 1)
        feeds.setdefault(int(i), {})[name] = data[key]
    return model, [feeds[i] for i in sorted(feeds)], json.loads((folder / "meta.json").read_text())


# ---------------------------------------------------------------- driver

def run(n: int, seed: int, save: Path | None, max_ops: int = 8, log=print, minimize_budget: int = 150,
        session: bool = True, progress: int = 0) -> dict:
    stats = {"graphs": 0, "invalid_originals": 0, "failing_graphs": 0, "failures": {}, "unsupported": 0,
             "saved": [], "seconds": 0.0}
    start = time.perf_counter()
    for s in range(seed, seed + n):
        if progress and s > seed and (s - seed) % progress == 0:
            log(f"progress: {s - seed} seeds, {stats['graphs']} graphs checked, {stats['failing_graphs']} failing, "
                f"{time.perf_counter() - start:.0f} s")
        model = random_model(s, max_ops=max_ops)
        feeds = feeds_for(model, s)
        try:
            onnx.checker.check_model(model, full_check=True)
            reference(model, feeds)
        except Exception:
            stats["invalid_originals"] += 1  # e.g. ORT's own If/outer-scope bug: not graphopt's business
            continue
        stats["graphs"] += 1
        try:
            failures, notes = check(model, feeds, session=session)
        except Exception as e:  # the harness itself must not die on one graph
            failures, notes = [Failure("harness-crash", f"{e.__class__.__name__}: {e}")], []
        stats["unsupported"] += any(n.startswith("session") for n in notes)
        stats["ort_bugs"] = stats.get("ort_bugs", 0) + any("ORT failed" in n for n in notes)
        if not failures:
            continue
        stats["failing_graphs"] += 1
        for f in failures:
            stats["failures"][f.key] = stats["failures"].get(f.key, 0) + 1
        first = failures[0]
        log(f"seed {s}: {first.key}: {first.detail[:200]} ({len(failures)} failing checks)")
        if save is not None:
            small, small_feeds = minimize(model, s, first.key, minimize_budget)
            meta = {"seed": s, "key": first.key, "detail": first.detail[:500],
                    "all_keys": sorted({f.key for f in failures}), "nodes_before": len(model.graph.node),
                    "nodes_after": len(small.graph.node), "xfail": None}
            folder = save_case(save / f"fuzz_{s}_{first.key.replace(':', '_').replace('/', '_')}", small, small_feeds, meta)
            stats["saved"].append(str(folder))
            log(f"  minimized {len(model.graph.node)} -> {len(small.graph.node)} nodes, saved {folder}")
    stats["seconds"] = round(time.perf_counter() - start, 1)
    return stats


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.fuzz", description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100, help="number of graphs")
    ap.add_argument("--seed", type=int, default=0, help="first seed (graph i uses seed + i)")
    ap.add_argument("--max-ops", type=int, default=8, help="op templates per graph (each 1..10 nodes)")
    ap.add_argument("--save", type=Path, help="folder for minimized failing cases (e.g. tests/regressions)")
    ap.add_argument("--json", type=Path, help="write the summary here")
    ap.add_argument("--no-session", action="store_true", help="skip the graphopt runtime checks (b)")
    ap.add_argument("--progress", type=int, default=0, metavar="N", help="print a status line every N graphs")
    ap.add_argument("--workers", type=int, metavar="N", help="check graphs on N worker processes (bench/fuzz_parallel.py)")
    ap.add_argument("--ray", metavar="auto|ADDRESS", help="check graphs on Ray (needs graphopt[ray])")
    args = ap.parse_args(argv)
    try:
        if args.workers is not None or args.ray:
            from bench.fuzz_parallel import run_parallel
            stats = run_parallel(args.n, args.seed, args.save, args.max_ops, log=lambda m: print(m, flush=True),
                                 session=not args.no_session, workers=args.workers, ray=args.ray)
        else:
            stats = run(args.n, args.seed, args.save, args.max_ops, log=lambda m: print(m, flush=True),
                        session=not args.no_session, progress=args.progress)
    except KeyboardInterrupt:
        return 130
    except Exception as e:
        from graphopt.errors import GraphoptError
        if isinstance(e, GraphoptError):  # --workers 0, --ray without Ray, an unreachable cluster: one line
            print(f"fuzz: error: {e}", file=sys.stderr)
            return 2
        traceback.print_exc()
        return 1
    print(f"graphs: {stats['graphs']} (plus {stats['invalid_originals']} originals ORT rejects, skipped)  "
          f"failing: {stats['failing_graphs']}  runtime-unsupported: {stats['unsupported']}  "
          f"ORT failures on valid outputs (checked with onnx.reference): {stats.get('ort_bugs', 0)}  "
          f"time: {stats['seconds']} s")
    for key, count in sorted(stats["failures"].items()):
        print(f"  {key}: {count}")
    if args.json:
        args.json.write_text(json.dumps(stats, indent=2) + "\n")
    return 1 if stats["failing_graphs"] else 0


if __name__ == "__main__":
    sys.exit(main())
