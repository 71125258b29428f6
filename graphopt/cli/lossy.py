"""`graphopt compile` options for the lossy steps: add_arguments(parser) and apply(args, model).

Lossy steps are opt-in and run after the lossless pipeline; every option is checked before any
work starts, and a failure leaves no output file (cli.py writes only what apply() returns).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import onnx

from graphopt.errors import UsageError


def _csv(text: str) -> list[str]:
    return [p.strip() for p in text.split(",") if p.strip()]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("lossy compression (opt-in, after the -O pipeline)")
    g.add_argument("--int8", choices=["static", "dynamic"], help="int8 quantization: static (QDQ, needs --calib) "
                   "or dynamic (int8 weights, activations quantized at run time)")
    g.add_argument("--calib", metavar="DATA", help="calibration data: a folder of .npz feeds or one .npz of stacked arrays")
    g.add_argument("--calib-method", choices=["minmax", "percentile", "entropy", "mse"], default="mse",
                   help="activation range estimator (default mse: per tensor, the range of least expected "
                        "quantization error; it agreed best with the float model on PP-OCR det/cls/rec)")
    g.add_argument("--percentile", type=float, default=99.99, help="for --calib-method percentile (default 99.99)")
    g.add_argument("--int8-format", choices=["qdq", "qoperator"], default="qdq",
                   help="qdq: QuantizeLinear/DequantizeLinear pairs (ONNX Runtime fuses them into integer kernels); "
                        "qoperator: QLinearConv/QLinearMatMul where an island allows it")
    g.add_argument("--int8-activations", choices=["auto", "int8", "uint8"], default="auto",
                   help="activation type: auto (default: the format ONNX Runtime runs fastest on this CPU, chosen from "
                        "its features and printed), int8 (S8S8) or uint8 (U8S8) forced")
    g.add_argument("--bias-correction", action="store_true",
                   help="static int8: fold the mean output shift of each Conv/Gemm's int8 weights into its bias "
                        "(measured on the calibration data)")
    g.add_argument("--smoothquant", type=float, metavar="ALPHA",
                   help="static int8: migrate activation outliers of MatMuls fed by a normalization into their "
                        "weights (SmoothQuant; ALPHA in [0, 1], 0.5 typical)")
    g.add_argument("--int8-exclude", type=_csv, default=[], metavar="NODE_OR_OP,...",
                   help="node names or op types to keep in float")
    g.add_argument("--int8-include-final", action="store_true",
                   help="also quantize the final classifier layer (kept float by default for static)")
    g.add_argument("--accuracy-budget", type=float, metavar="ERR",
                   help="largest error vs the float model on --eval data; falls back sensitive layers to float "
                        "(--int8) or lowers the prune ratio / leaves sensitive layers unpruned (--prune)")
    g.add_argument("--eval", metavar="DATA", help="held-out evaluation data (never the calibration data)")
    g.add_argument("--metric", default="top1", help="top1 | cosine | max-rel-error | python:module:function")
    g.add_argument("--best-effort", action="store_true", help="write the most accurate candidate when none meets the budget")
    g.add_argument("--prune", type=float, metavar="RATIO", help="prune this fraction of weights/channels (0 <= RATIO < 1)")
    g.add_argument("--prune-mode", choices=["channel", "unstructured", "2:4"], default="channel",
                   help="channel: drop lowest-norm output channels (shapes shrink); unstructured: zero the smallest "
                        "weights; 2:4: keep 2 of every 4 along the input channels")
    g.add_argument("--recover", action=argparse.BooleanOptionalAction, default=None,
                   help="after channel pruning, refit each pruned layer to the original model's activations on the "
                        "--calib data (least squares); default on when --calib is given with --prune")
    g.add_argument("--prune-scope", choices=["layer", "global"], default="layer",
                   help="unstructured: one magnitude threshold per layer (default) or one over all layers")
    g.add_argument("--int4-weights", action="store_true",
                   help="int4 weight-only MatMul/Gemm: blocked DequantizeLinear (opset 21) for --target onnx, "
                        "MatMulNBits for --target ort")
    g.add_argument("--int4-method", choices=["rtn", "gptq"], default=None,
                   help="int4 rounding: gptq (error feedback on the --calib activations; the default with --calib) "
                        "or rtn (round to nearest; the default without data)")
    g.add_argument("--act-order", action="store_true", help="GPTQ: quantize the inputs of largest activation first")
    g.add_argument("--block-size", type=int, default=32, help="int4 block size along K (power of two >= 16; default 32)")
    g.add_argument("--fp16", action="store_true", help="weights and compute in float16 (sensitive ops stay float32)")
    g.add_argument("--fp16-block", type=_csv, metavar="OP,...",
                   help="op types kept float32 (replaces the default list: LayerNormalization, Reduce*, Pow, Exp, Log, ...)")
    g.add_argument("--fp16-io", action="store_true", help="make model inputs/outputs float16 too (default: float32)")


def requested(args) -> bool:
    return bool(getattr(args, "int8", None) or getattr(args, "fp16", False) or getattr(args, "prune", None) is not None
                or getattr(args, "int4_weights", False))


def validate(args) -> None:
    """Usage checks that need no model: run before compiling so a mistake costs nothing."""
    if (args.int4_method or args.act_order) and not args.int4_weights:
        raise UsageError("--int4-method/--act-order need --int4-weights")
    if args.int4_method == "gptq" and not args.calib:
        raise UsageError("--int4-method gptq needs calibration data (--calib DATA)")
    if args.recover and args.prune is None:
        raise UsageError("--recover needs --prune (it refits pruned layers)")
    if args.recover and not args.calib:
        raise UsageError("--recover needs calibration data (--calib DATA)")
    if not args.int8 and args.prune is not None and args.calib and args.prune_mode != "channel":
        raise UsageError("--calib with --prune needs --prune-mode channel (recovery refits pruned channels)")
    if not args.int8:
        budget = args.accuracy_budget if args.prune is None else None  # --prune alone: a prune-ratio search
        # --prune: calibration data for recovery; --int4-weights: for GPTQ
        calib = args.calib if args.prune is None and not args.int4_weights else None
        for opt, val in (("--calib", calib), ("--accuracy-budget", budget)):
            if val is not None:
                raise UsageError(f"{opt} needs an int8 mode (--int8 static|dynamic)" +
                                 (" or --prune" if opt == "--accuracy-budget" else ""))
        if args.eval and not (args.fp16 or args.int4_weights) and args.prune is None:
            raise UsageError("--eval needs a lossy mode (--int8, --int4-weights, --fp16 or --prune)")
    if getattr(args, "bias_correction", False) and args.int8 != "static":
        raise UsageError("--bias-correction needs --int8 static")
    if getattr(args, "smoothquant", None) is not None and args.int8 != "static":
        raise UsageError("--smoothquant needs --int8 static")
    workers, ray = getattr(args, "workers", None), getattr(args, "ray", None)
    if workers is not None and workers < 1:
        raise UsageError(f"--workers must be >= 1, got {workers}")
    if (workers is not None or ray) and args.int8 != "static" and args.accuracy_budget is None:
        raise UsageError("--workers/--ray spread int8 static calibration and the --accuracy-budget search: "
                         "use them with --int8 static or --accuracy-budget (or compile-many for a fleet)")
    if args.prune is not None and not 0.0 <= args.prune < 1.0:
        raise UsageError(f"--prune must be in [0, 1), got {args.prune}")
    if args.prune is not None and args.accuracy_budget is not None and (args.int8 or args.fp16 or args.int4_weights):
        raise UsageError("--accuracy-budget searches one lossy step: use it with --prune alone or with --int8 alone")
    if sum(bool(x) for x in (args.int8, args.fp16, args.int4_weights)) > 1:
        raise UsageError("--int8, --int4-weights and --fp16 are exclusive: choose one")
    if args.int4_weights and (args.block_size < 16 or args.block_size & (args.block_size - 1)):
        raise UsageError(f"--block-size must be a power of two >= 16, got {args.block_size}")
    if (args.fp16_block is not None or args.fp16_io) and not args.fp16:
        raise UsageError("--fp16-block/--fp16-io need --fp16")
    if not requested(args):
        return
    if args.int8 == "static" and not args.calib:
        raise UsageError("--int8 static needs calibration data (--calib DATA)")
    if args.accuracy_budget is not None and not args.eval:
        raise UsageError("--accuracy-budget needs evaluation data (--eval DATA)")
    for opt, val in (("--calib", args.calib), ("--eval", args.eval)):
        if val and not Path(val).exists():
            raise UsageError(f"{opt} data '{val}' does not exist")
    if args.calib and args.eval and args.calib == args.eval:
        raise UsageError("--eval must be held-out data, not the --calib data")


def apply(args, model: onnx.ModelProto, quiet: bool = False) -> onnx.ModelProto:
    """Run the requested lossy steps on the compiled model; print their report; return the result."""
    validate(args)
    if not requested(args):
        return model
    from graphopt import lossy
    from graphopt.lossy.calibrate import iter_feeds
    for what, data in (("calibration", args.calib), ("evaluation", args.eval)):
        if data:  # every file checked before any lossy work: a bad last file fails in seconds, not after calibrating
            for _ in iter_feeds(data, model, what):
                pass
    say = None if quiet else (lambda msg: print(f"  {msg}", file=sys.stderr, flush=True))
    keep_final = None if not args.int8_include_final else False
    if args.prune is not None:
        model = _prune(args, model, quiet)
        if not (args.int8 or args.fp16 or args.int4_weights):
            return model
    if args.int4_weights:
        from graphopt.passes.quantize.int4 import apply_int4
        target = getattr(args, "target", None) or "onnx"
        hessians, method = None, args.int4_method or ("gptq" if args.calib else "rtn")
        if method == "gptq":
            from graphopt.lossy.calibrate import feeds_list
            from graphopt.passes.quantize.common import ModelView, select_nodes
            from graphopt.passes.quantize.gptq import collect_hessians
            calib = feeds_list(args.calib, model, "calibration")
            nodes = select_nodes(ModelView(model), {"MatMul", "Gemm"}, args.int8_exclude, False).quantize
            hessians = collect_hessians(model, nodes, calib, progress=say)
        out, rep = apply_int4(model, args.block_size, "ort" if target == "ort" else "onnx", args.int8_exclude,
                              hessians=hessians, act_order=args.act_order)
        report = lossy.LossyReport(f"int4 weight-only ({'MatMulNBits' if target == 'ort' else 'blocked DequantizeLinear'}"
                                   f", block {args.block_size}, {method}{', act-order' if args.act_order else ''})", rep.weights, {}, rep.nodes, rep.kept_float,
                                   model.ByteSize(), out.ByteSize())
        if args.eval:
            from graphopt.lossy.calibrate import feeds_list
            report.agreement = lossy.agreement(model, out, feeds_list(args.eval, model, "evaluation"), "eval")
        if not quiet:
            print(report.to_text())
        return out
    if args.accuracy_budget is not None:
        with _executor(args) as executor:
            out, report = lossy.with_budget(model, args.int8, args.eval, args.accuracy_budget, args.metric,
                                            args.best_effort, args.calib, args.calib_method, args.percentile,
                                            args.int8_exclude, keep_final, say, args.int8_format,
                                            args.int8_activations, executor=executor)
    elif args.fp16:
        from graphopt.passes.precision import DEFAULT_BLOCK, convert_fp16
        block = DEFAULT_BLOCK if args.fp16_block is None else set(args.fp16_block)
        out, report = convert_fp16(model, block, keep_io_float32=not args.fp16_io)
        if args.eval and not args.fp16_io:
            from graphopt.lossy.calibrate import feeds_list
            report.agreement = lossy.agreement(model, out, feeds_list(args.eval, model, "evaluation"), "eval")
        if not quiet:
            print(report.to_text())
        return out
    elif args.int8 == "static":
        with _executor(args) as executor:
            out, report = lossy.int8_static(model, args.calib, args.calib_method, args.percentile, args.int8_exclude,
                                            keep_final is None, say, fmt=args.int8_format,
                                            activations=args.int8_activations, ort_report=True,
                                            bias_correction=args.bias_correction, smooth=args.smoothquant,
                                            executor=executor)
    else:
        out, report = lossy.int8_dynamic(model, args.int8_exclude, keep_final=False)
    if args.eval and args.accuracy_budget is None:
        from graphopt.lossy.calibrate import feeds_list
        report.agreement = lossy.agreement(model, out, feeds_list(args.eval, model, "evaluation"), "eval")
    if not quiet:
        print(report.to_text())
    return out


def _executor(args):
    """--workers N (N > 1) or --ray / $GRAPHOPT_RAY_ADDRESS: calibration shards and budget candidates run
    on an executor (graphopt/distributed); otherwise in this process, as before."""
    import contextlib
    import os

    from graphopt.distributed import RAY_ENV, make_executor
    workers, ray = getattr(args, "workers", None), getattr(args, "ray", None)
    if (workers or 1) < 2 and not ray and not os.environ.get(RAY_ENV):
        return contextlib.nullcontext(None)
    return make_executor(workers, ray)


def _prune(args, model: onnx.ModelProto, quiet: bool) -> onnx.ModelProto:
    from graphopt.lossy.calibrate import feeds_list
    from graphopt.passes.prune import prune
    say = None if quiet else (lambda msg: print(f"  {msg}", file=sys.stderr, flush=True))
    sample = None
    if args.eval:
        feeds = feeds_list(args.eval, model, "evaluation")
        sample = {k: v.shape for k, v in feeds[0].items()}
    refine = None
    if args.prune_mode == "channel" and args.calib and args.recover is not False:
        calib = feeds_list(args.calib, model, "calibration")  # checked before any work

        def refine(pruned, report):  # least-squares refit to the original model (prune_recover.py)
            from graphopt.passes.prune_recover import recover
            if not report.pruned:
                return pruned, None
            return recover(model, pruned, report.kept, calib, progress=say)
    if args.accuracy_budget is not None:  # lower the ratio until the budget holds (graphopt/lossy/budget.py)
        from graphopt.lossy.budget import prune_with_budget
        with _executor(args) as executor:
            evaluate = None
            if executor is not None:
                from graphopt.lossy.parallel_eval import evaluator
                evaluate = evaluator(executor, args.metric)
            out, report, table = prune_with_budget(model, args.prune, args.prune_mode, feeds, args.accuracy_budget,
                                                   args.metric, args.best_effort, args.prune_scope, say, evaluate,
                                                   refine)
        if not quiet:
            print(report.to_text() + "\n" + table)
        return out
    out, report = prune(model, args.prune, args.prune_mode, sample, args.prune_scope)
    if not quiet:
        print(report.to_text())
    if refine is not None:
        out, recovered = refine(out, report)
        if recovered is not None and not quiet:
            print(recovered.to_text())
    if not quiet and args.eval:
        from graphopt.lossy import api as lossy
        for k, v in lossy.agreement(model, out, feeds, "eval").items():
            print(f"  agreement with float: {k} = {v}")
    return out
