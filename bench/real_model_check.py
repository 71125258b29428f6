"""Correctness on real models from PyPI wheels (bench/wheel_models.py, every variant found).

For each model, on its seeded feed, the expected outputs come from ONNX Runtime on the model as
given with its graph optimizations off (so ORT's own rewrites are not the reference). Checked:
  * graphopt.Session on the model as given;
  * graphopt.compile at each --levels x targets onnx, ort, graphopt: the output passes
    onnx.checker.check_model, and runs on ONNX Runtime (targets onnx and ort, optimizations off)
    and on graphopt.Session (all targets).
Error = max |got - expected| / max |expected|, worst output; OK when <= 1e-3. One line per check
(OK/BAD/ERR, model, check, error, seconds), a summary; exit 1 when a check is BAD or ERR, 2 when no
model is found (python -m bench.wheel_models fetch).

    python bench/real_model_check.py
    python bench/real_model_check.py --models silero,magika --levels 2
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench import wheel_models  # noqa: E402

TOLERANCE = 1e-3
TARGETS = ("onnx", "ort", "graphopt")


def relative_error(got, want) -> float:
    """Worst output's max abs error over its max |expected|; inf on a count or shape mismatch."""
    if len(got) != len(want):
        return float("inf")
    errors = [0.0]
    for g, w in zip(got, want):
        g, w = np.asarray(g, np.float64), np.asarray(w, np.float64)
        if g.shape != w.shape:
            return float("inf")
        if w.size == 0:
            continue
        with np.errstate(invalid="ignore"):  # inf - inf
            diff = np.abs(g - w)
        diff[(g == w) | (np.isnan(g) & np.isnan(w))] = 0.0  # the same inf or NaN as ORT agrees
        finite = np.abs(w[np.isfinite(w)])
        errors.append(float(diff.max()) / max(float(finite.max()) if finite.size else 0.0, 1e-6))
    return float(np.max(errors))  # a NaN error (NaN where ORT has a number) stays NaN: BAD


def ort_run(model, feed):
    from graphopt.verify import ort_session
    return ort_session(model).run(None, feed)


def session_run(model, feed):
    import graphopt
    return graphopt.Session(model).run(None, feed)


class Checker:
    def __init__(self):
        self.counts = {"OK": 0, "BAD": 0, "ERR": 0}

    def line(self, flag, model, check, detail, seconds):
        self.counts[flag] += 1
        print(f"{flag:3s} {model:24s} {check:22s} {detail} {seconds:6.1f}s", flush=True)

    def compare(self, model, check, fn, want):
        t0 = time.perf_counter()
        try:
            err = relative_error(fn(), want)
        except Exception as e:  # noqa: BLE001  (a failing run is a result to report, not a crash)
            return self.error(model, check, e, t0)
        flag = "OK" if err <= TOLERANCE else "BAD"  # NaN compares false: BAD
        self.line(flag, model, check, f"err {err:.1e}", time.perf_counter() - t0)

    def error(self, model, check, exc, t0):
        msg = " ".join(str(exc).split())[:200]
        self.line("ERR", model, check, f"{type(exc).__name__}: {msg}", time.perf_counter() - t0)


def check_model(wm, path, levels, out: Checker):
    import graphopt
    model = onnx.load(str(path))
    feed = wm.feed()
    t0 = time.perf_counter()
    try:
        want = ort_run(model, feed)
    except Exception as e:  # noqa: BLE001
        return out.error(wm.name, "ORT reference", e, t0)
    out.compare(wm.name, "Session as given", lambda: session_run(model, feed), want)
    for level in levels:
        for target in TARGETS:
            label = f"O{level} {target}"
            t0 = time.perf_counter()
            try:
                compiled = graphopt.compile(model, level=level, target=target)
                onnx.checker.check_model(compiled)
            except Exception as e:  # noqa: BLE001
                out.error(wm.name, f"{label} compile+checker", e, t0)
                continue
            if target != "graphopt":  # ai.graphopt ops run on graphopt's runtime only
                out.compare(wm.name, f"{label} on ORT", lambda c=compiled: ort_run(c, feed), want)
            out.compare(wm.name, f"{label} on Session", lambda c=compiled: session_run(c, feed), want)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", help="comma-separated substrings of model names (default: all found)")
    ap.add_argument("--levels", default="1,2,3", help="comma-separated compile levels (default 1,2,3)")
    args = ap.parse_args(argv)
    levels = [int(x) for x in args.levels.split(",")]
    selected = args.models.split(",") if args.models else None
    found = [(wm, p) for wm, p in wheel_models.available() if not selected or any(s in wm.name for s in selected)]
    if not found:
        print(f"no wheel model found (run: {wheel_models.FETCH_HINT})", file=sys.stderr)
        return 2
    out = Checker()
    t0 = time.perf_counter()
    for wm, path in found:
        check_model(wm, path, levels, out)
    c = out.counts
    print(f"{len(found)} model(s), {sum(c.values())} checks: {c['OK']} OK, {c['BAD']} BAD, {c['ERR']} ERR "
          f"(tolerance {TOLERANCE:g} relative to max |expected|; {time.perf_counter() - t0:.0f} s)")
    return 1 if c["BAD"] or c["ERR"] else 0


if __name__ == "__main__":
    sys.exit(main())
