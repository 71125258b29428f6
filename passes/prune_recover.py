"""Teacher-guided recovery after channel pruning: a least-squares refit of each layer (layer-wise
distillation, no training framework).

For each Conv (any group) / Gemm / MatMul of the pruned model whose weights pruning changed (and,
with scope "downstream", every such layer after one), the new weights W and bias b minimise

    || X W + b - Y ||^2 + lam * || [W; b] - [W0; b0] ||^2

where X is the layer's input in the pruned model (already refit upstream: layers are solved in
topological order, a wave at a time: the layers of one wave do not feed each other), Y is the
teacher's (original model's) output of the same node on the kept output channels, and W0, b0 are
the pruned weights (the ridge pulls towards them, not towards zero, so a layer the data barely
constrains stays what pruning made it). X^T X and X^T Y are accumulated in float64 feed by feed,
so memory does not grow with the data; Conv inputs become im2col patches at a random subset of
output positions (rows_per_feed bounds the cost). A grouped/depthwise Conv is one small solve per
group. lam = damp * mean(diag(X^T X)), damp chosen per layer by validation (fit on the even
feeds, measured on the odd ones) (a layer seen on few rows, like one on a 1x1 pooled map, gets strong
damping or keeps its pruned weights when no refit predicts the other half better). A system that
is still singular or gives non-finite weights is retried with 100x the damping (noted in the
report); one that never solves keeps its pruned weights. The ridge is centred on W0, so the
calibration error never increases.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import onnx

from .prune_base import attr
from .prune_recover_data import conv_rows, dense_rows, prefix_session
from .quantize.static import drop_unused_initializers
from .quantize.common import ModelView, node_label

LAYERS = ("Conv", "Gemm", "MatMul")


@dataclass
class LayerFit:
    rows: int
    unknowns: int
    error_before: float  # relative squared error vs the teacher on the calibration rows
    error_after: float
    note: str = ""


@dataclass
class RecoverReport:
    layers: dict = field(default_factory=dict)    # label -> LayerFit
    skipped: dict = field(default_factory=dict)   # label -> reason
    waves: int = 0
    feeds: int = 0
    seconds: float = 0.0

    def to_text(self) -> str:
        lines = [f"recover (least-squares refit to the teacher): {len(self.layers)} layer(s) refit in {self.waves} "
                 f"wave(s) over {self.feeds} calibration feed(s), {self.seconds:.1f} s; relative error before -> after"]
        for label, f in self.layers.items():
            lines.append(f"  refit   {label}: {f.error_before:.4g} -> {f.error_after:.4g} ({f.rows} rows, "
                         f"{f.unknowns} unknowns/output){'; ' + f.note if f.note else ''}")
        lines += [f"  skipped {k}: {v}" for k, v in self.skipped.items()]
        return "\n".join(lines)


@dataclass
class _Layer:
    node: onnx.NodeProto
    label: str
    keep: np.ndarray          # teacher output channels that the pruned layer still produces
    groups: int
    w0: list                  # per group: [unknowns, outputs] current weights (bias row last if fitted)
    has_bias: bool
    kernel: tuple = (1, 1)    # Conv: (kh, kw); a 1-D conv is a 2-D one of height 1
    xtx: np.ndarray = None    # [2 halves of the feeds, groups, n, n]
    xty: np.ndarray = None    # [2, groups, n, outputs per group]
    yy: np.ndarray = None     # [2]: sum of squared targets
    rows: int = 0


def recover(teacher: onnx.ModelProto, pruned: onnx.ModelProto, kept: dict, feeds: list, scope: str = "changed",
            damp: float | None = None, rows_per_feed: int = 1024, sequential: bool = True, progress=None, seed: int = 0):
    """Returns (refit model, RecoverReport). `kept`: label -> kept output channel indices (PruneReport.kept);
    `feeds`: a list of checked feed dicts. Only layers whose input differs from the teacher's are refit
    (a pruned layer reading the model input keeps its rows); scope "changed": those pruning edited,
    "downstream": every layer after a change."""
    if scope not in ("changed", "downstream"):
        raise ValueError(f"recover scope must be changed or downstream, got {scope}")
    if not feeds:
        raise ValueError("recovery needs calibration feeds")
    start = time.perf_counter()
    say = progress or (lambda msg: None)
    model = onnx.ModelProto()
    model.CopyFrom(pruned)
    view, tview = ModelView(model), ModelView(teacher)
    report = RecoverReport(feeds=len(feeds))
    layers = _select(view, tview, kept, scope, report)
    pending = list(layers)
    done = 0
    while pending:
        wave = _next_wave(view, pending) if sequential else list(pending)
        pending = [x for x in pending if all(x is not w for w in wave)]
        _accumulate(teacher, model, wave, feeds, rows_per_feed, seed + report.waves)
        for layer in wave:
            _solve_and_write(view, layer, damp, report)
        view.refresh()
        report.waves += 1
        done += len(wave)
        elapsed = time.perf_counter() - start
        say(f"recover: {done}/{len(layers)} layers refit, {elapsed:.0f} s, "
            f"ETA {elapsed / done * (len(layers) - done):.0f} s")
    drop_unused_initializers(model)
    onnx.checker.check_model(model)
    report.seconds = time.perf_counter() - start
    return model, report


# ------------------------------------------------------------------------------------ selection
def _select(view: ModelView, tview: ModelView, kept: dict, scope: str, report: RecoverReport) -> list:
    changed_tensors: set[str] = set()
    out = []
    for node in view.model.graph.node:
        reads_changed = any(i in changed_tensors for i in node.input)
        if node.op_type not in LAYERS or len(node.input) < 2:
            if reads_changed:
                changed_tensors.update(o for o in node.output if o)
            continue
        label = node_label(node)
        teacher_node = tview.producer.get(node.output[0])
        w, tw = view.const(node.input[1]), (None if teacher_node is None else tview.const(teacher_node.input[1]))
        if w is None:  # activation x activation (attention scores): nothing to refit
            if reads_changed:
                changed_tensors.update(o for o in node.output if o)
            continue
        edited = teacher_node is None or tw is None or w is None or w.shape != tw.shape or label in kept
        if edited or reads_changed:
            changed_tensors.update(o for o in node.output if o)
        if not reads_changed or not (edited or scope == "downstream"):
            continue  # its input is the teacher's: the pruned rows are already the best fit
        layer, why = _make_layer(view, node, teacher_node, w, tw, kept.get(label))
        if layer is None:
            report.skipped[label] = why
        else:
            out.append(layer)
    return out


def _make_layer(view, node, teacher_node, w, tw, keep):
    label = node_label(node)
    if teacher_node is None or teacher_node.op_type != node.op_type or tw is None:
        return None, "no matching layer in the original model"
    if w is None or w.dtype != np.float32:
        return None, "weight is not a constant float32 tensor"
    bias = None
    if len(node.input) > 2 and node.input[2]:
        bias = view.const(node.input[2])
        if bias is None:
            return None, "bias is not constant"
    if node.op_type == "Conv":
        if w.ndim not in (3, 4):
            return None, f"{w.ndim - 2}-D convolution (only 1-D and 2-D are refit)"
        out_ch, groups = w.shape[0], attr(node, "group", 1)
        keep = np.arange(tw.shape[0]) if keep is None else np.asarray(keep)
        b = np.zeros(out_ch, np.float64) if bias is None else bias.astype(np.float64).reshape(-1)
        per = out_ch // groups
        w0 = [np.concatenate([w[g * per:(g + 1) * per].reshape(per, -1).T, b[None, g * per:(g + 1) * per]])
              .astype(np.float64) for g in range(groups)]
        has_bias = True
    else:
        if w.ndim != 2:
            return None, "weight is not 2-D"
        if node.op_type == "Gemm":
            if attr(node, "transA", 0) or attr(node, "beta", 1.0) == 0:
                return None, "Gemm with transA or beta 0"
            if bias is not None and bias.size not in (1, w.shape[0 if attr(node, "transB", 0) else 1]):
                return None, "Gemm C is not a per-output vector"
        wk = (w.T if node.op_type == "Gemm" and attr(node, "transB", 0) else w).astype(np.float64)
        alpha = attr(node, "alpha", 1.0) if node.op_type == "Gemm" else 1.0
        wk = wk * alpha
        out_ch, groups = wk.shape[1], 1
        t_out = tw.shape[0] if node.op_type == "Gemm" and attr(node, "transB", 0) else tw.shape[1]
        keep = np.arange(t_out) if keep is None else np.asarray(keep)
        has_bias = node.op_type == "Gemm"
        if has_bias:
            beta = attr(node, "beta", 1.0)
            b = np.zeros(out_ch) if bias is None else np.broadcast_to(bias.astype(np.float64).reshape(-1), (out_ch,))
            wk = np.concatenate([wk, beta * b[None]])
        w0 = [wk]
    if keep.size != out_ch:
        return None, f"kept channels ({keep.size}) do not match the layer's {out_ch} outputs"
    kernel = (tuple(w.shape[2:]) if w.ndim == 4 else (1, w.shape[2])) if node.op_type == "Conv" else (1, 1)
    return _Layer(node, label, keep, groups, w0, has_bias, kernel), ""


def _next_wave(view: ModelView, pending: list) -> list:
    """The pending layers that no other pending layer feeds (their inputs are final)."""
    pending_out = {layer.node.output[0]: layer for layer in pending}
    wave = []
    for layer in pending:
        seen, stack, blocked = set(), [layer.node.input[0]], False
        while stack and not blocked:
            t = stack.pop()
            if t in seen:
                continue
            seen.add(t)
            if t in pending_out and pending_out[t] is not layer:
                blocked = True
            p = view.producer.get(t)
            if p is not None:
                stack.extend(i for i in p.input if i)
        if not blocked:
            wave.append(layer)
    return wave


# ------------------------------------------------------------------------------- accumulation
def _accumulate(teacher, model, wave: list, feeds: list, rows_per_feed: int, seed: int) -> None:
    ins = list(dict.fromkeys(layer.node.input[0] for layer in wave))
    outs = list(dict.fromkeys(layer.node.output[0] for layer in wave))
    student, teach = prefix_session(model, ins), prefix_session(teacher, outs)
    for layer in wave:  # statistics of two halves of the feeds (even / odd): they choose the damping
        size, outs_per_group = layer.w0[0].shape
        layer.xtx = np.zeros((2, layer.groups, size, size))
        layer.xty = np.zeros((2, layer.groups, size, outs_per_group))
        layer.yy, layer.rows = np.zeros(2), 0
    rng = np.random.default_rng(seed)
    for index, feed in enumerate(feeds):
        xs = dict(zip(ins, student.run(ins, feed)))
        ys = dict(zip(outs, teach.run(outs, feed)))
        half = index % 2
        for layer in wave:
            x, y = xs[layer.node.input[0]], ys[layer.node.output[0]]
            rows_x, rows_y = (conv_rows if layer.node.op_type == "Conv" else dense_rows)(
                layer, np.asarray(x, np.float32), np.asarray(y, np.float32), rows_per_feed, rng)
            if layer.has_bias:
                rows_x = np.concatenate([rows_x, np.ones(rows_x.shape[:-1] + (1,))], axis=-1)
            if rows_x.ndim == 2:  # one group: [rows, 1, n]
                rows_x, rows_y = rows_x[:, None], rows_y[:, None]
            xg, yg = rows_x.transpose(1, 0, 2), rows_y.transpose(1, 0, 2)  # [groups, rows, n]
            layer.xtx[half] += xg.transpose(0, 2, 1) @ xg
            layer.xty[half] += xg.transpose(0, 2, 1) @ yg
            layer.yy[half] += float(np.sum(rows_y ** 2))
            layer.rows += rows_x.shape[0]


# ------------------------------------------------------------------------------------ solving
DAMPING = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)  # candidates, relative to the mean of diag(X^T X)


def _ridge(a, b, w0, damp):
    """argmin ||X W - Y||^2 + lam ||W - W0||^2 for every group at once ([groups, n, *] arrays);
    lam = damp * mean(diag(a)). Returns (W, note); W is None when no damping up to 1e4x makes it solvable."""
    scale = np.maximum(np.mean(np.diagonal(a, axis1=1, axis2=2), axis=1), 1e-12)[:, None, None]
    eye = np.eye(a.shape[1])
    note = ""
    for _ in range(3):
        lam = damp * scale
        try:
            chol = np.linalg.cholesky(a + lam * eye)
            w = np.linalg.solve(chol.transpose(0, 2, 1), np.linalg.solve(chol, b + lam * w0))
        except np.linalg.LinAlgError:
            w = None
        if w is not None and np.all(np.isfinite(w)):
            return w, note
        damp = max(damp * 100, 1e-6)
        note = f"ill-conditioned: damping raised to {damp:.3g}"
    return None, "no stable solution"


def _sq_error(a, b, yy, w) -> float:
    """||X W - Y||^2 from the accumulated X^T X, X^T Y and ||Y||^2."""
    return float(np.sum(w * (a @ w)) - 2 * np.sum(w * b) + yy)


def _choose_damping(layer: _Layer, w0) -> tuple[float | None, str]:
    """The damping whose fit on the even feeds best predicts the odd ones, walking down from the
    strongest and stopping once the held-out error rises again (it is U-shaped in the damping; each
    step is a Cholesky solve, the cost of recovery on wide layers). None when keeping the pruned
    weights predicts better than every fit."""
    a, b, yy = layer.xtx, layer.xty, layer.yy
    if yy[1] == 0:  # one feed: nothing to validate on
        return 1e-2, "one calibration feed: damping 1e-2 not validated"
    best, best_err = None, _sq_error(a[1], b[1], yy[1], w0)
    previous = np.inf
    for damp in sorted(DAMPING, reverse=True):
        w, _ = _ridge(a[0], b[0], w0, damp)
        err = np.inf if w is None else _sq_error(a[1], b[1], yy[1], w)
        if err < best_err:
            best, best_err = damp, err
        if err > previous:
            break
        previous = err
    return best, ""


def _solve_and_write(view: ModelView, layer: _Layer, damp: float | None, report: RecoverReport) -> None:
    w0 = np.stack(layer.w0)
    a, b, yy = layer.xtx.sum(0), layer.xty.sum(0), float(layer.yy.sum())
    notes = []
    if damp is None:
        damp, note = _choose_damping(layer, w0)
        notes.append(note if note else "kept: no refit predicts held-out feeds better" if damp is None
                     else f"damping {damp:g}")
    w = w0
    if damp is not None:
        w, note = _ridge(a, b, w0, damp)
        notes.append(note)
        if w is None:
            notes.append("pruned weights kept")
            w = w0
    before, after = _sq_error(a, b, yy, w0), _sq_error(a, b, yy, w)
    if after > before:  # cannot happen in exact arithmetic (the ridge is centred on W0); rounding guard
        w, after = w0, before
        notes.append("refit did not lower the error: pruned weights kept")
    _write(view, layer, list(w))
    unknowns = w0.shape[1]
    if layer.rows < unknowns:
        notes.append(f"fewer rows than unknowns ({layer.rows} < {unknowns})")
    denominator = max(yy, 1e-30)
    report.layers[layer.label] = LayerFit(layer.rows, unknowns, max(before, 0.0) / denominator,
                                          max(after, 0.0) / denominator, "; ".join(n for n in notes if n))


def _write(view: ModelView, layer: _Layer, new: list) -> None:
    node = layer.node
    if node.op_type == "Conv":
        old = view.const(node.input[1])
        w = np.concatenate([m[:-1].T for m in new]).reshape(old.shape).astype(np.float32)
        b = np.concatenate([m[-1] for m in new]).astype(np.float32)
        _set(view, node, 1, w)
        _set(view, node, 2, b)
        return
    m = new[0]
    if node.op_type == "Gemm":
        wk, c = m[:-1] / attr(node, "alpha", 1.0), m[-1] / attr(node, "beta", 1.0)
        _set(view, node, 1, (wk.T if attr(node, "transB", 0) else wk).astype(np.float32))
        _set(view, node, 2, c.astype(np.float32))
    else:
        _set(view, node, 1, m.astype(np.float32))


def _set(view: ModelView, node, index: int, value: np.ndarray) -> None:
    while len(node.input) <= index:
        node.input.append("")
    node.input[index] = view.add_init(f"{node.input[index] or node_label(node) + '_bias'}_refit", value)
