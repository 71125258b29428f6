"""`graphopt compile` checks its result by default: the input model and the compiled one run on the
same inputs (cli/feeds.py) and every output is compared. The input runs in ONNX Runtime with its
optimizations off; the output too, unless it holds ai.graphopt ops (--target graphopt), which only
graphopt's runtime runs. A mismatch is an error: cli/main.py then writes nothing.

Lossy compiles (--int8, --prune, --fp16, --int4-weights) change outputs by design: they are not
checked here, their own agreement report (--eval) measures them.
"""
from __future__ import annotations

import numpy as np
import onnx

from graphopt.cli.common import has_graphopt_ops
from graphopt.errors import Unsupported, VerificationFailed
from graphopt.verify import compare_arrays, ort_session

RTOL, ATOL = 1e-4, 1e-5


def add_arguments(parser) -> None:
    g = parser.add_argument_group("verification (default: outputs of the input and the compiled model compared)")
    g.add_argument("--no-verify", action="store_true", help="do not compare the compiled model's outputs with the input's")
    g.add_argument("--rtol", type=float, default=RTOL, help=f"relative tolerance (default {RTOL})")
    g.add_argument("--atol", type=float, default=ATOL, help=f"absolute tolerance (default {ATOL})")


def _relative(want, got, atol: float) -> float:
    """Largest |got - want| / |want| where |want| > atol: near zero a relative error means nothing
    (a 4e-6 difference on a 1e-29 value is 'relative error 1e23')."""
    want, got = np.asarray(want), np.asarray(got)
    if want.size == 0 or not np.issubdtype(want.dtype, np.number):
        return 0.0
    w, g = want.astype(np.float64), got.astype(np.float64)
    big = np.abs(w) > atol
    return float(np.max(np.abs(g[big] - w[big]) / np.abs(w[big]), initial=0.0)) if big.any() else 0.0


def verify_compiled(original: onnx.ModelProto, compiled: onnx.ModelProto, feeds: list, rtol: float = RTOL,
                    atol: float = ATOL) -> str:
    """The `verified: ...` line; raises VerificationFailed when an output differs beyond
    atol + rtol * |expected|. Returns a `not verified: ...` line when the input model itself cannot
    run on these inputs (nothing to compare against)."""
    try:
        ref = ort_session(original)
        names = [o.name for o in ref.get_outputs()]
        expected = [ref.run(names, feed) for feed in feeds]
    except Exception as e:  # ORT lacks an op of the input model, or the inputs do not suit it
        return (f"not verified: ONNX Runtime cannot run the input model on these inputs "
                f"({str(e).splitlines()[0]}); give real inputs with --input/--inputs, or --no-verify")
    if has_graphopt_ops(compiled):
        from graphopt.runtime.session import Session
        where = "graphopt runtime"
        try:
            sess = Session(compiled)
        except Unsupported as e:
            return f"not verified: graphopt's runtime cannot run the output ({e})"
    else:
        where = "onnxruntime"
        sess = ort_session(compiled)
    worst_abs = worst_rel = 0.0
    for feed, want in zip(feeds, expected):
        try:
            got = sess.run(names, feed)
        except Exception as e:
            raise VerificationFailed(f"the compiled model fails in {where}: {str(e).splitlines()[0]}") from None
        for name, w, g in zip(names, want, got):
            err = compare_arrays(name, w, g, rtol=rtol, atol=atol)
            if not err.ok:
                raise VerificationFailed(
                    f"output '{name}' changed: max abs err {err.max_abs:.3g}, max rel err {err.max_rel:.3g}"
                    f"{' (' + err.note + ')' if err.note else ''} > rtol {rtol:g}/atol {atol:g} ({where}); "
                    f"nothing written (--no-verify writes it anyway)")
            worst_abs, worst_rel = max(worst_abs, err.max_abs), max(worst_rel, _relative(w, g, atol))
    return (f"verified: max abs err {worst_abs:.3g}, max rel err {worst_rel:.3g} (where |expected| > atol) "
            f"on {len(feeds)} input"
            f"{'s' if len(feeds) != 1 else ''} (rtol {rtol:g}/atol {atol:g}; {where})")
