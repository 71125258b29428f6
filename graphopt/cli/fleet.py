"""`graphopt compile-many MANIFEST`: a fleet of models through an executor (graphopt/fleet.py), and the
--workers / --ray options every scale-out command shares."""
from __future__ import annotations

import argparse
import sys



def add_executor_arguments(parser: argparse.ArgumentParser, default_help: str, retries: bool = True) -> None:
    g = parser.add_argument_group("scale-out (graphopt/distributed)")
    g.add_argument("--workers", type=int, metavar="N", help=f"worker processes ({default_help})")
    g.add_argument("--ray", metavar="auto|ADDRESS",
                   help="run the tasks on Ray: auto (the Ray instance on this machine, else a local one) or the "
                        "cluster head's HOST:PORT / ray://HOST:PORT (also $GRAPHOPT_RAY_ADDRESS); needs graphopt[ray]")
    if retries:
        g.add_argument("--retries", type=int, default=2, metavar="N",
                       help="reruns of a task that raised or whose worker died (default 2)")


def progress_printer(quiet: bool):
    """One progress line: rewritten in place on a terminal, a line every few seconds in a log."""
    if quiet:
        return None
    tty = sys.stderr.isatty()

    def say(line: str) -> None:
        print(("\r\033[K" if tty else "  ") + line, end="" if tty else "\n", file=sys.stderr, flush=True)
    return say


def add_fleet_command(sub) -> None:
    m = sub.add_parser("compile-many", help="compile and verify a fleet of models listed in a manifest",
                       description="Compile (and verify, and int8-quantize when an entry asks) every model of a "
                                   "JSON/CSV manifest on worker processes or Ray. Resumable: an entry whose output "
                                   "and .done.json record are complete is skipped. One failure does not stop the "
                                   "rest; a summary table ends the run (exit 1 when an entry failed).")
    m.add_argument("manifest", help="manifest.json or manifest.csv (keys: model, output, name, level, target, "
                                    "opset, int8, calib, calib_method, verify)")
    m.add_argument("--out-dir", metavar="DIR", help="where entries without an output go (<name>.opt.onnx; created)")
    m.add_argument("--fresh", action="store_true", help="redo every entry, finished or not")
    m.add_argument("--force", action="store_true", help="allow an entry to overwrite its input file")
    m.add_argument("-q", "--quiet", action="store_true", help="print only the summary table and errors")
    add_executor_arguments(m, "default: one per core when there are several models")
    m.set_defaults(handler=cmd_compile_many)


def cmd_compile_many(args) -> int:
    from pathlib import Path

    from graphopt.distributed import make_executor
    from graphopt.errors import UsageError
    from graphopt.fleet import compile_many, read_manifest, summary_table
    if args.retries < 0:
        raise UsageError(f"--retries must be >= 0, got {args.retries}")
    if args.out_dir:
        out = Path(args.out_dir)
        if out.exists() and not out.is_dir():
            raise UsageError(f"--out-dir '{out}' is not a folder")
    entries = read_manifest(args.manifest, args.out_dir, args.force)  # every mistake before any work
    if args.out_dir:
        Path(args.out_dir).mkdir(parents=True, exist_ok=True)
    say = progress_printer(args.quiet)
    with make_executor(args.workers, args.ray, tasks=len(entries)) as executor:
        if say:
            print(f"compile-many: {len(entries)} models on {executor.describe()}", file=sys.stderr)
        rows = compile_many(entries, executor, args.retries, args.fresh, say)
    if say and sys.stderr.isatty():
        print(file=sys.stderr)
    print(summary_table(rows))
    return 1 if any(r.status == "FAILED" for r in rows) else 0


__all__ = ["add_executor_arguments", "add_fleet_command", "cmd_compile_many", "progress_printer"]
