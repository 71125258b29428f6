"""`graphopt run | bench | verify`: the runtime's commands. cli.py calls add_runtime_commands(sub);
each command is a function of the parsed args that returns the exit status."""
from __future__ import annotations

import argparse
import os
import re

import numpy as np

from graphopt.cli import common, feeds
from graphopt.errors import GraphoptError


def add_runtime_commands(sub) -> None:
    r = sub.add_parser("run", help="run a model with graphopt's runtime and summarize its outputs")
    r.add_argument("model")
    r.add_argument("--random", action="store_true", help=argparse.SUPPRESS)  # random data is the default now
    _common(r)
    r.add_argument("--output-dir", metavar="DIR", help="also save every output as DIR/<name>.npy")
    r.set_defaults(handler=cmd_run)

    from graphopt.cli.bench import add_bench_command
    _common(add_bench_command(sub))

    v = sub.add_parser("verify", help="compare two models (ORT) or graphopt's runtime with ORT on one model")
    v.add_argument("model")
    v.add_argument("other", nargs="?", help="second model: compare A and B, both run in ONNX Runtime")
    v.add_argument("--rtol", type=float, default=1e-4)
    v.add_argument("--atol", type=float, default=1e-5)
    v.add_argument("--runs", type=int, default=2, help="random input sets to try (default 2)")
    _common(v)
    v.set_defaults(handler=cmd_verify)


def _common(p) -> None:
    p.add_argument("--device", choices=["cpu", "gpu"], default="cpu",
                   help="cpu: NumPy runtime (default); gpu: CuPy runtime (needs graphopt[gpu] and a GPU)")
    p.add_argument("--gpu-fallback", action="store_true",
                   help="with --device gpu: run ops that have no GPU kernel on the CPU instead of failing")
    feeds.add_arguments(p)  # --input, --inputs, --dim, --input-shape, --seed


_device = common.session_options
_load = common.load_model_file
_has_graphopt_ops = common.has_graphopt_ops


def cmd_run(args) -> int:
    from graphopt.runtime.session import Session
    model = _load(args.model)
    sess = Session(model, **_device(args))
    feed = feeds.feeds_for(args, model)[0]
    with feeds.blame_random_inputs(args):
        outputs = sess.run(None, feed)
    if args.output_dir:
        os.makedirs(args.output_dir, exist_ok=True)
    for arg, value in zip(sess.get_outputs(), outputs):
        print(_describe(arg.name, value))
        if args.output_dir:
            safe = re.sub(r"[^A-Za-z0-9_.-]", "_", arg.name) or "output"
            np.save(os.path.join(args.output_dir, safe + ".npy"), np.asarray(value), allow_pickle=False)
    return 0


def _describe(name: str, value) -> str:
    if isinstance(value, list):
        return f"{name}: sequence of {len(value)} tensors"
    if value is None:
        return f"{name}: empty optional"
    a = np.asarray(value)
    head = f"{name}: shape {list(a.shape)} {a.dtype}"
    if a.size and a.dtype.kind in "biuf":
        f = a.astype(np.float64)
        return f"{head} min {f.min():.6g} max {f.max():.6g} mean {f.mean():.6g}"
    return head


def cmd_verify(args) -> int:
    from graphopt.runtime.session import Session
    from graphopt.verify import compare_arrays, ort_session
    a = _load(args.model)
    feed_list = feeds.feeds_for(args, a, count=max(args.runs, 1))
    ref = ort_session(a)
    if args.other and _has_graphopt_ops(b := _load(args.other)):  # `compile --target graphopt` output
        sess = Session(b, **_device(args))
        run_cand = lambda feed: sess.run(names, feed)  # noqa: E731
        label = f"{args.other} (graphopt runtime: it has ai.graphopt ops) vs {args.model} (onnxruntime)"
    elif args.other:
        cand = ort_session(b)
        run_cand = lambda feed: cand.run(names, feed)  # noqa: E731
        label = f"{args.other} (onnxruntime) vs {args.model} (onnxruntime)"
    else:
        sess = Session(a, **_device(args))
        run_cand = lambda feed: sess.run(names, feed)  # noqa: E731
        label = f"graphopt runtime vs onnxruntime on {args.model}"
    names = [o.name for o in ref.get_outputs()]
    worst: dict = {}
    for feed in feed_list:
        try:
            expected = ref.run(names, feed)
        except Exception as e:  # ORT refuses these inputs: the data's problem, not graphopt's
            raise GraphoptError(f"ONNX Runtime fails on {args.model} with these inputs: {str(e).splitlines()[0]}"
                                f" (give real inputs with --input/--inputs or sizes with --dim/--input-shape)") from None
        for name, want, got in zip(names, expected, run_cand(feed)):
            err = compare_arrays(name, want, got, rtol=args.rtol, atol=args.atol)
            prev = worst.get(name)
            if prev is None or (prev.ok and not err.ok) or err.max_abs > prev.max_abs:
                worst[name] = err
    print(label)
    for name in names:
        e = worst[name]
        note = f" ({e.note})" if e.note else ""
        print(f"  {name}: max abs {e.max_abs:.3g}, max rel {e.max_rel:.3g} {'PASS' if e.ok else 'FAIL'}{note}")
    ok = all(e.ok for e in worst.values())
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1
