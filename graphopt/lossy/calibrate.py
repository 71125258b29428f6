"""Calibration data and activation ranges for int8 static quantization.

Data: a folder of .npz files (each one feed: input name -> array), one .npz of stacked arrays
(a leading sample axis, or the model's batch axis), or any Python iterable of feed dicts.
Feeds are checked against the model (names, dtypes, ranks, fixed dims) and a bad one stops with an
error naming the file/feed and the input. Ranges stream: each batch updates min/max and a histogram
per tensor (re-binned when the range grows), so memory does not grow with the data set.
"""
from __future__ import annotations

import math
import zipfile
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import onnx
from onnx import helper

from graphopt.errors import GraphoptError, UsageError
from graphopt.verify import tensor_reader, with_outputs

METHODS = ("minmax", "percentile", "entropy", "mse")
BINS = 2048  # histogram bins over [-R, R]; R doubles (pairs of bins merge) when data falls outside


class CalibrationError(GraphoptError):
    """Calibration or evaluation data that does not fit the model."""


# ----------------------------------------------------------------------------------------- data
def _input_specs(model: onnx.ModelProto) -> dict[str, tuple[np.dtype, list]]:
    inits = {t.name for t in model.graph.initializer}
    specs = {}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        tt = vi.type.tensor_type
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tt.elem_type)) if tt.elem_type else None
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim] \
            if tt.HasField("shape") else None
        specs[vi.name] = (dtype, dims)
    return specs


def check_feed(model_specs: dict, feed: dict, where: str) -> dict:
    """Raise CalibrationError naming `where` and the input when a feed does not fit the model."""
    if not isinstance(feed, dict):
        raise CalibrationError(f"{where}: expected a dict of input name -> array, got {type(feed).__name__}")
    unknown = sorted(set(feed) - set(model_specs))
    if unknown:
        raise CalibrationError(f"{where}: '{unknown[0]}' is not a model input (inputs: {', '.join(model_specs)})")
    missing = [n for n in model_specs if n not in feed]
    if missing:
        raise CalibrationError(f"{where}: missing model input '{missing[0]}'")
    out = {}
    for name, value in feed.items():
        arr = np.asarray(value)
        dtype, dims = model_specs[name]
        if dtype is not None and arr.dtype != dtype:
            raise CalibrationError(f"{where}: input '{name}' has dtype {arr.dtype}, the model expects {dtype}")
        if dims is not None:
            if arr.ndim != len(dims):
                raise CalibrationError(f"{where}: input '{name}' has shape {list(arr.shape)}, "
                                       f"the model expects rank {len(dims)} {['?' if d is None else d for d in dims]}")
            for axis, (have, want) in enumerate(zip(arr.shape, dims)):
                if want is not None and have != want:
                    raise CalibrationError(f"{where}: input '{name}' has shape {list(arr.shape)}, the model "
                                           f"expects {['?' if d is None else d for d in dims]} (axis {axis})")
        out[name] = arr
    return out


def load_npz(path: Path) -> dict:
    """All arrays of one .npz; a file that is not one is an error naming it (not a zipfile traceback)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, AttributeError) as e:
        raise CalibrationError(f"{path}: not a readable .npz file ({str(e).splitlines()[0]})") from None


def _stacked(path: Path, specs: dict) -> Iterator[tuple[str, dict]]:
    arrays = load_npz(path)
    if not arrays:
        return
    n = {len(a) if a.ndim else 0 for a in arrays.values()}
    if len(n) != 1:
        raise CalibrationError(f"{path}: stacked arrays disagree on the sample count ({sorted(n)})")
    count = n.pop()
    for name, a in arrays.items():
        rank = len(specs[name][1]) if name in specs and specs[name][1] is not None else None
        if rank is not None and a.ndim == rank:  # leading axis is the model's batch axis: slices of 1
            arrays[name] = a[:, None]
    for i in range(count):
        yield f"{path} [sample {i}]", {k: a[i] for k, a in arrays.items()}


def iter_feeds(data, model: onnx.ModelProto, what: str = "calibration") -> Iterator[dict]:
    """Checked feeds from a folder, an .npz file or an iterable of dicts; raises on empty data."""
    specs = _input_specs(model)
    if isinstance(data, (str, Path)):
        path = Path(data)
        if path.is_dir():
            files = sorted(path.glob("*.npz"))
            if not files:
                raise CalibrationError(f"{what} data '{path}' holds no .npz files")
            source = ((str(f), load_npz(f)) for f in files)
        elif path.is_file():
            source = _stacked(path, specs)
        else:
            raise UsageError(f"{what} data '{path}' does not exist")
    else:
        source = ((f"{what} feed {i}", feed) for i, feed in enumerate(data))
    count = 0
    for where, feed in source:
        count += 1
        yield check_feed(specs, feed, where)
    if count == 0:
        raise CalibrationError(f"{what} data is empty (no feeds)")


# -------------------------------------------------------------------------------------- ranges
class TensorStats:
    """Running min/max and a symmetric histogram over [-R, R] whose R only doubles."""

    def __init__(self, with_hist: bool):
        self.lo, self.hi, self.count = math.inf, -math.inf, 0
        self.hist = np.zeros(BINS, np.int64) if with_hist else None
        self.radius = 0.0

    def update(self, x: np.ndarray) -> None:
        x = x[np.isfinite(x)] if not np.isfinite(x).all() else x
        if x.size == 0:
            return
        lo, hi = float(x.min()), float(x.max())
        self.lo, self.hi, self.count = min(self.lo, lo), max(self.hi, hi), self.count + x.size
        if self.hist is None:
            return
        # R is the smallest power of two strictly above every |x| (frexp is exact), so no value sits on
        # the closed last edge and each count is that of a fixed dyadic bin: the histogram depends on
        # the values only, not on the batch order, and shards merge exactly (merge below)
        self.grow_to(math.ldexp(1.0, math.frexp(max(abs(lo), abs(hi), 1e-12))[1]))
        h, _ = np.histogram(x, bins=BINS, range=(-self.radius, self.radius))
        self.hist += h

    def grow_to(self, radius: float) -> None:
        """Widen the histogram to `radius` (a power of two): R doubles, each pair of bins merges and
        the old range fills the middle half."""
        if self.radius == 0.0:
            self.radius = radius
        while radius > self.radius:
            merged = self.hist.reshape(-1, 2).sum(axis=1)
            self.hist = np.zeros(BINS, np.int64)
            self.hist[BINS // 4: BINS // 4 + BINS // 2] = merged
            self.radius *= 2

    def merge(self, other: "TensorStats") -> None:
        """Add another shard's statistics: exactly what one process streaming both shards' data keeps."""
        if other.count == 0:
            return
        self.lo, self.hi, self.count = min(self.lo, other.lo), max(self.hi, other.hi), self.count + other.count
        if self.hist is None or other.hist is None:
            return
        theirs = TensorStats(True)
        theirs.hist, theirs.radius = other.hist.copy(), other.radius
        radius = max(self.radius, other.radius)
        self.grow_to(radius)
        theirs.grow_to(radius)
        self.hist += theirs.hist

    def _edges(self):
        return np.linspace(-self.radius, self.radius, BINS + 1)

    def range(self, method: str, percentile: float) -> tuple[float, float]:
        if self.count == 0:
            return 0.0, 0.0
        if method == "minmax" or self.hist is None:
            return self.lo, self.hi
        if method == "percentile":
            cdf = np.cumsum(self.hist) / self.hist.sum()
            tail = (100.0 - percentile) / 200.0  # p% of the values inside, the rest split over both tails
            edges = self._edges()
            lo = edges[int(np.searchsorted(cdf, tail, side="left"))]
            hi = edges[min(int(np.searchsorted(cdf, 1.0 - tail, side="left")) + 1, BINS)]
            return max(self.lo, float(lo)), min(self.hi, float(hi))
        if method == "mse":  # least expected quantization error (calibrate_mse.py)
            from graphopt.lossy.calibrate_mse import mse_range
            return mse_range(self.hist, self.radius, min(self.lo, 0.0), max(self.hi, 0.0))
        # a non-negative tensor spends all 256 int8 levels on [0, th]; a signed one about half on |x|
        th = self._entropy_threshold(255 if self.lo >= 0 else 128)
        return max(self.lo, -th), min(self.hi, th)

    def _entropy_threshold(self, levels: int = 128) -> float:
        """Threshold on |x| minimising KL(P || Q) where Q is P squeezed into `levels` bins (TensorRT's
        calibration idea); candidates step through the folded histogram."""
        half = BINS // 2
        folded = (self.hist[half:] + self.hist[:half][::-1]).astype(np.float64)
        width = self.radius / half
        best, best_i = math.inf, half
        for i in range(levels, half + 1, 8):
            kept = folded[:i]
            p = kept.copy()
            p[-1] += folded[i:].sum()  # P clips the outliers into the last bin ...
            if p.sum() == 0:
                continue
            # ... Q is the kept part squeezed into `levels` bins (outliers lost), spread back over
            # the non-empty bins of each chunk
            edges = (np.arange(levels + 1) * i) // levels
            sums = np.add.reduceat(kept, edges[:-1])
            nonzero = np.add.reduceat((kept > 0).astype(np.float64), edges[:-1])
            per_bin = np.repeat(np.where(nonzero > 0, sums / np.maximum(nonzero, 1), 0.0), np.diff(edges))
            q = np.where(kept > 0, per_bin, 0.0)
            p[0] = q[0] = 0.0  # the bin at 0 holds ReLU's spike of exact zeros, which int8 keeps exact
            if p.sum() == 0:
                continue
            p, q = p / p.sum(), q / max(q.sum(), 1e-30)
            m = p > 0
            kl = float(np.sum(p[m] * np.log(p[m] / np.maximum(q[m], 1e-30))))
            if kl < best:
                best, best_i = kl, i
        return best_i * width


def calibrate(model: onnx.ModelProto, tensors: list[str], data, method: str = "minmax",
              percentile: float = 99.99, progress: Callable[[str], None] | None = None,
              runner: str = "ort") -> dict[str, tuple[float, float]]:
    """Range (lo, hi) per tensor over the calibration data, streamed batch by batch."""
    if method not in METHODS:
        raise UsageError(f"unknown calibration method '{method}' (choose {', '.join(METHODS)})")
    if not 50.0 < percentile <= 100.0:
        raise UsageError(f"--percentile must be in (50, 100], got {percentile}")
    run = tensor_runner(model, tensors, runner)
    stats = {t: TensorStats(method != "minmax") for t in tensors}
    batches = samples = 0
    for feed in iter_feeds(data, model):
        values = run(feed)
        for t, v in zip(tensors, values):
            if v is not None and np.asarray(v).dtype.kind == "f":
                stats[t].update(np.asarray(v, np.float32).ravel())
        batches += 1
        samples += len(next(iter(feed.values()))) if feed and np.ndim(next(iter(feed.values()))) else 1
        if progress and (batches & (batches - 1) == 0 or batches % 50 == 0):
            progress(f"calibrating: {batches} batches, {samples} samples, {len(tensors)} tensors")
    if progress:
        progress(f"calibrated {len(tensors)} tensors on {batches} batches ({samples} samples, {method})")
    return {t: s.range(method, percentile) for t, s in stats.items()}


def tensor_runner(model: onnx.ModelProto, tensors: list[str], kind: str):
    """A function feed -> [value of each tensor], running the float model with extra outputs."""
    if kind != "graphopt":
        return tensor_reader(model, tensors)
    from graphopt.runtime.session import Session
    sess = Session(with_outputs(model, tensors))
    return lambda feed: sess.run(tensors, feed)


def feeds_list(data, model: onnx.ModelProto, what: str) -> list[dict]:
    """All feeds of an evaluation set, checked (evaluation sets are reused across candidates)."""
    return list(iter_feeds(data, model, what))


input_specs = _input_specs  # public: lossy/calib_shards.py checks shard feeds in the workers
