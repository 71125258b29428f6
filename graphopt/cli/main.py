"""graphopt command line: compile | passes | inspect (| run | bench | verify from the runtime).

Errors a user can cause print one line and exit 1 (usage errors 2); --debug shows the traceback.
"""
from __future__ import annotations

import argparse
import os
import sys
import traceback
from pathlib import Path

from graphopt.errors import GraphoptError, UsageError
from graphopt.version import __version__
from graphopt.compiler import targets
from graphopt.ir.limits import add_limit_options, limits_from_args

EPILOG = """examples:
  graphopt compile model.onnx -o model.opt.onnx            # default -O2
  graphopt compile model.onnx -o out.onnx -O1 --report r.json
  graphopt compile model.onnx -o out.onnx --verify-each     # stop at the first pass that breaks outputs
  graphopt compile model.onnx -o out.onnx --plugin my_passes.py --passes my-pass
  graphopt passes                                           # list passes and their levels
  graphopt kernels --op Conv                                # which kernel runs an op, and where it is
  graphopt inspect model.onnx
  graphopt compile-many fleet.json --out-dir out/ --workers 4   # or --ray auto|HOST:PORT

exit status: 0 ok; 1 a problem with the model or data (missing/invalid file, outputs that changed,
a failed run); 2 a usage error (bad option, unknown input/dim/pass name). --debug (anywhere on the
line) shows the traceback.
"""


def _size(text: str) -> int:
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    t = text.strip().lower().removesuffix("b").removesuffix("i")
    try:
        return int(float(t[:-1]) * units[t[-1]]) if t and t[-1] in units else int(t)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: '{text}' (use bytes or e.g. 64M, 1G)") from None


def _csv(text: str) -> list[str]:
    return [p.strip() for p in text.split(",") if p.strip()]


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="graphopt", description="Optimize ONNX models and run them.",
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG)
    ap.add_argument("--debug", action="store_true", help="show full tracebacks on errors (accepted anywhere)")
    ap.add_argument("--version", action="version", version=f"graphopt {__version__}")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    c = sub.add_parser("compile", help="optimize a model", formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Apply graph rewrites and write the optimized model. Levels: O0 nothing, "
                                   "O1 cleanup + folding (constants, shapes, BatchNorm/scale/bias/zero-Pad into Conv weights), "
                                   "O2 + fusions (default), O3 + level-3 passes (none is built in today: O3 = O2 unless a "
                                   "plugin registers one; `graphopt passes` lists levels).")
    c.add_argument("input", help="model.onnx to optimize")
    c.add_argument("-o", "--output", help="where to write the result (default: <input>.opt.onnx)")
    c.add_argument("-O", dest="level", type=int, choices=range(4), default=2, help="optimization level (default 2)")
    c.add_argument("--passes", type=_csv, default=[], help="comma-separated passes to run regardless of level")
    c.add_argument("--disable", type=_csv, default=[], help="comma-separated passes never to run")
    c.add_argument("--plugin", action="append", default=[], metavar="FILE.py",
                   help="Python file that registers extra passes (repeatable)")
    c.add_argument("--verify-each", action="store_true",
                   help="after every pass: onnx.checker + compare outputs with the input model (ONNX Runtime)")
    c.add_argument("--bisect-limit", type=int, metavar="N", help="skip every pass run after the Nth")
    c.add_argument("--print-after", type=_csv, default=[], metavar="PASS", help="print the graph after PASS")
    c.add_argument("--trace", type=_csv, default=[], metavar="RULE",
                   help="say where RULE fired and why its best near-miss failed (a pass name: all its rules; "
                        "'all' for every rule; names: graphopt passes --rules)")
    c.add_argument("--report", metavar="FILE.json", help="write the compile report as JSON ('-': to stdout)")
    c.add_argument("--fold-limit", type=_size, default=64 << 20, metavar="BYTES",
                   help="largest tensor constant folding may create (default 64M)")
    c.add_argument("--external-data", choices=["auto", "always", "never"], default="auto",
                   help="store weights in a .data file beside the output (auto: only past 2 GB)")
    c.add_argument("--force", action="store_true", help="allow overwriting the input file")
    c.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors")
    from graphopt.cli.lossy import add_arguments as add_lossy_arguments  # --int8, --calib, --accuracy-budget, ...
    add_lossy_arguments(c)
    from graphopt.cli.fleet import add_executor_arguments  # --workers N / --ray: int8 static calibration, budget search
    add_executor_arguments(c, "int8 static calibration and the --accuracy-budget search; default 1", retries=False)
    add_limit_options(c)
    targets.add_target_arguments(c)  # --target, --opset
    from graphopt.cli import compile_check, feeds
    compile_check.add_arguments(c)  # --no-verify, --rtol, --atol
    feeds.add_arguments(c, pins=True)  # the inputs verification runs on: --input, --inputs, --dim, --input-shape

    p = sub.add_parser("passes", help="list registered passes")
    p.add_argument("--plugin", action="append", default=[], metavar="FILE.py", help="also load these plugin passes")
    p.add_argument("--rules", action="store_true", help="also list each rule-based pass's rules (names for --trace)")

    k = sub.add_parser("kernels", help="list runtime kernels: domain/op, since opset, device -> file:line")
    k.add_argument("--op", help="only this op (case-insensitive; 'Conv' matches Conv, not ConvTranspose)")
    k.add_argument("--device", choices=("cpu", "gpu"), help="only this device's kernels")

    i = sub.add_parser("inspect", help="describe a model: opsets, inputs/outputs, ops, parameters")
    i.add_argument("input")
    i.add_argument("--json", action="store_true", help="print JSON")

    from graphopt.cli.fleet import add_fleet_command  # compile-many MANIFEST
    add_fleet_command(sub)
    try:
        from graphopt.cli.runtime import add_runtime_commands
    except ImportError:
        pass
    else:
        add_runtime_commands(sub)
    return ap


def cmd_compile(args) -> int:
    from graphopt import ir
    from graphopt.pipeline import compile_model
    src = Path(args.input)
    out = Path(args.output) if args.output else src.with_suffix(".opt.onnx")
    if not out.resolve().parent.is_dir():
        raise GraphoptError(f"output folder '{out.parent}' does not exist")
    if src.exists() and out.exists() and out.resolve() == src.resolve() and not args.force:
        raise UsageError(f"refusing to overwrite the input '{src}' (use --force)")
    from graphopt.cli import lossy as lossy_cli
    lossy_cli.validate(args)  # lossy option mistakes fail before any work
    progress = None if args.quiet else (lambda msg: print(f"  {msg}", file=sys.stderr, flush=True))
    from graphopt.cli import compile_check, feeds
    verify = not args.no_verify and not lossy_cli.requested(args)  # lossy outputs differ by design
    original = ir.load_model(src, limits=limits_from_args(args)) if verify or args.verify_each else None
    inputs, note = feeds.feeds_and_note(args, original, count=2) if original is not None else (None, "")
    from graphopt.cli import pin  # --dim / --input-shape also pin the model's input dims before the passes
    model_in = src
    if pin.requested(args):
        model_in = pin.pinned_model(args, original if original is not None
                                    else ir.load_model(src, limits=limits_from_args(args)))
    result = compile_model(model_in, level=args.level, passes=args.passes, disable=args.disable,
                           verify_each=args.verify_each, verify_options={"feeds": inputs} if inputs else None,
                           print_after=args.print_after,
                           bisect_limit=args.bisect_limit, trace=args.trace, fold_limit=args.fold_limit,
                           plugins=args.plugin, progress=progress if sys.stderr.isatty() or args.verify_each else None,
                           limits=limits_from_args(args), **targets.target_options(args))
    result.model = lossy_cli.apply(args, result.model, quiet=args.quiet)  # opt-in, after the lossless pipeline
    checked = compile_check.verify_compiled(original, result.model, inputs, args.rtol, args.atol) if verify \
        else "not verified: " + ("--no-verify" if args.no_verify else "lossy output (compare it with --eval DATA)")
    external = {"auto": None, "always": True, "never": False}[args.external_data]
    ir.save(result.model, out, external_data=external, protect=() if args.force else ir.input_files(src))
    if args.report == "-":
        print(result.report.to_json())
    elif args.report:
        Path(args.report).write_text(result.report.to_json())
    if not args.quiet:
        for block in result.report.printed:
            print(block)
        print(result.report.to_text())
        for line in result.report.trace:
            print(f"trace: {line}")
        for rule, (_, node, reason) in result.report.near_misses.items():
            print(f"trace: {rule}: best near-miss at '{node}': {reason}")
        if note:  # printed once the compile succeeded: an error stays one line
            print(note, file=sys.stderr)
        print(checked)
        print(f"wrote {out}")
    return 0


def cmd_passes(args) -> int:
    from graphopt.pipeline import load_builtin_passes, load_plugin
    from graphopt.compiler.pass_manager import REGISTRY
    load_builtin_passes()
    for plugin in args.plugin:
        load_plugin(plugin)
    print(f"{'pass':24}{'level':>6}  {'origin':22}description")
    for info in REGISTRY.values():
        level = "opt-in" if info.opt_in else f"O{info.level}"
        from_plugin = info.origin.startswith("graphopt_plugin_")  # load_plugin's names also start "graphopt"
        origin = "built-in" if info.origin.startswith("graphopt") and not from_plugin \
            else info.origin.removeprefix("graphopt_plugin_")
        print(f"{info.name:24}{level:>6}  {origin:22}{info.doc}")
        if args.rules and getattr(info, "rules", None):
            print(f"{'':32}rules: {', '.join(dict.fromkeys(r.name for r in info.rules))}")
    return 0


def cmd_kernels(args) -> int:
    import inspect
    import os

    import graphopt.kernels.cpu  # noqa: F401  (registers the CPU kernels)
    from graphopt.kernels import registry
    try:
        import graphopt.kernels.gpu  # noqa: F401  (registers the GPU kernels; imports no CuPy)
    except ImportError:
        pass
    root = os.path.dirname(os.path.dirname(inspect.getfile(registry)))

    def where(fn) -> str:
        fn = inspect.unwrap(fn)
        try:
            return f"{os.path.relpath(inspect.getsourcefile(fn), root)}:{inspect.getsourcelines(fn)[1]}"
        except (TypeError, OSError):  # a builtin or a generated callable
            return "?"

    rows = [r for r in registry.table() if (not args.op or r[1].lower() == args.op.lower())
            and (not args.device or r[3] == args.device)]
    if not rows:
        raise UsageError(f"no kernel registered for op {args.op!r}" + (f" on {args.device}" if args.device else ""))
    print(f"{'domain/op':44}{'since':>6}  {'device':7}kernel (prepared at)")
    for domain, op, since, device, fn, prep in rows:
        prepared = f"  (prepared: {where(prep)})" if prep is not None else ""
        print(f"{(domain or 'ai.onnx') + '/' + op:44}{since:>6}  {device:7}{where(fn)}{prepared}")
    return 0


def cmd_inspect(args) -> int:
    import json
    from dataclasses import asdict

    from graphopt import ir
    from graphopt.compiler.report import summarize
    s = summarize(ir.load_model(args.input))
    if args.json:
        print(json.dumps(asdict(s), indent=2))
        return 0
    print(f"opsets: {', '.join(f'{d} {v}' for d, v in s.opsets.items())}")
    for kind, values in (("input", s.inputs), ("output", s.outputs)):
        for v in values:
            print(f"{kind:7}{v['name']}: {v['dtype']} {v['shape']}")
    print(f"nodes: {s.nodes}   initializers: {s.initializers}   "
          f"parameters: {s.parameters:,} ({s.parameter_bytes / 2**20:.2f} MiB)")
    for op, n in s.ops.items():
        print(f"  {op:28}{n:>6}")
    return 0


COMMANDS = {"compile": cmd_compile, "passes": cmd_passes, "kernels": cmd_kernels, "inspect": cmd_inspect}


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv  # accepted before or after the subcommand
    args = build_parser().parse_args([a for a in argv if a != "--debug"])
    args.debug = debug
    handler = COMMANDS.get(args.command) or getattr(args, "handler", None)
    try:
        code = handler(args)
        sys.stdout.flush()  # a closed pipe shows here, inside the handler below, not at interpreter exit
        return code
    except BrokenPipeError:  # `graphopt inspect m.onnx | head -3`: the reader left, nothing to say
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # Python's flush at exit would fail on the closed pipe again
        return 0
    except UsageError as e:
        if args.debug:
            traceback.print_exc()
        print(f"graphopt: error: {e}", file=sys.stderr)
        return 2
    except GraphoptError as e:
        if args.debug:
            traceback.print_exc()
        print(f"graphopt: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("graphopt: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a graphopt bug, not the user's: still one line unless --debug
        if args.debug:
            traceback.print_exc()
        print(f"graphopt: internal error: {e.__class__.__name__}: {e} (rerun with --debug for the traceback)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
