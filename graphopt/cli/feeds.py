"""One way to give a model its inputs, for run, bench, verify and compile (--verify-each and the
verification after compiling):

  --input NAME=FILE.npy        one input from a file (repeatable; a name the model lacks is refused)
  --inputs DATA                whole feeds: a folder of .npz files or one .npz of stacked arrays
                               (the --calib format, graphopt/lossy/calibrate.py)
  --dim NAME=VALUE             a symbolic dim, for the inputs made up at random
  --input-shape NAME=D0,D1,..  an input's full shape (unnamed dims too)

Inputs not given are random data shaped after the model (graphopt/ir/sample_inputs.py), and a note
on stderr says what was assumed.
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import zipfile
from pathlib import Path

import numpy as np
import onnx

from graphopt.errors import GraphoptError, UsageError
from graphopt.ir.sample_inputs import dim_name, plan_inputs


def _pair(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got '{text}'")
    return name, value


def add_arguments(p: argparse.ArgumentParser, pins: bool = False) -> None:
    g = p.add_argument_group("inputs (default: random data shaped after the model; a note says what was assumed)",
                             "on compile, --dim and --input-shape also pin the model's input dims before the passes "
                             "run (shape chains fold completely): the compiled model has those static input shapes"
                             if pins else None)
    g.add_argument("--input", dest="input_files", action="append", type=_pair, default=[], metavar="NAME=FILE.npy",
                   help="feed input NAME from a .npy file (repeatable)")
    g.add_argument("--inputs", metavar="DATA", help="feeds from a folder of .npz files or one .npz of stacked "
                   "arrays (input name -> array; the --calib format)")
    g.add_argument("--dim", action="append", type=_pair, default=[], metavar="NAME=VALUE",
                   help="size of a symbolic dimension for random inputs")
    g.add_argument("--input-shape", action="append", type=_pair, default=[], metavar="NAME=D0,D1,...",
                   help="full shape of input NAME for random inputs (sets unnamed dims too)")
    g.add_argument("--seed", type=int, default=0, help="seed for random inputs (default 0)")


def _ints(option: str, name: str, text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        values = []
    if not values or any(v < 0 for v in values) or (option == "--dim" and len(values) != 1):
        raise UsageError(f"{option} {name}={text}: expected "
                         f"{'a size >= 0' if option == '--dim' else 'sizes >= 0 as D0,D1,...'}")
    return values


def _load_npy(name: str, file: str) -> np.ndarray:
    path = Path(file)
    if not path.is_file():
        raise UsageError(f"--input {name}: file not found: {file}")
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise GraphoptError(f"--input {name}: '{file}' is not a readable .npy file ({e})") from None


def _check_array(name: str, array: np.ndarray, vi) -> None:
    """A file's array must have the input's dtype, rank and fixed dims: said here, naming the input,
    rather than deep inside a runtime."""
    tt = vi.type.tensor_type
    if not vi.type.HasField("tensor_type"):
        return
    want = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)) if tt.elem_type else None
    if want is not None and array.dtype != want:
        raise UsageError(f"--input {name}: the file holds {array.dtype}, the model expects {want} "
                         f"(save it with .astype(np.{want.name}))")
    dims = list(tt.shape.dim) if tt.HasField("shape") else None
    if dims is None:
        return
    declared = [d.dim_value if d.HasField("dim_value") else "?" for d in dims]
    if len(dims) != array.ndim or any(d != "?" and d != n for d, n in zip(declared, array.shape)):
        raise UsageError(f"--input {name}: the array has shape {list(array.shape)}, the model expects {declared}")


def feeds_for(args, model: onnx.ModelProto, count: int = 1, quiet: bool = False) -> list[dict]:
    """feeds_and_note, the note printed on stderr unless quiet."""
    feeds, note = feeds_and_note(args, model, count)
    if note and not quiet:
        print(note, file=sys.stderr)
    return feeds


def feeds_and_note(args, model: onnx.ModelProto, count: int = 1) -> tuple[list[dict], str]:
    """The feeds the options describe: those of --inputs (with --input files replacing arrays), else
    `count` feeds of --input files plus random data for the other inputs; and the note saying what
    the random data assumed ('' when there is none)."""
    inits = {t.name for t in model.graph.initializer}
    inputs = {vi.name: vi for vi in model.graph.input if vi.name not in inits}
    files = {}
    for name, file in getattr(args, "input_files", []):
        if name not in inputs:
            raise UsageError(f"--input {name}: the model has no input '{name}' (inputs: {', '.join(inputs)})")
        files[name] = _load_npy(name, file)
        _check_array(name, files[name], inputs[name])
    if getattr(args, "inputs", None):
        from graphopt.lossy.calibrate import iter_feeds
        return [{**feed, **files} for feed in iter_feeds(args.inputs, model, "input")], ""
    dims = {name: _ints("--dim", name, v)[0] for name, v in getattr(args, "dim", [])}
    shapes = {name: _ints("--input-shape", name, v) for name, v in getattr(args, "input_shape", [])}
    for name, array in files.items():  # a given array fixes its input's dims for the random ones
        declared = inputs[name].type.tensor_type.shape.dim
        for d, size in zip(declared, array.shape):
            if dim_name(d) and dims.setdefault(dim_name(d), size) != size:
                raise UsageError(f"--input {name}: dim '{dim_name(d)}' is {dims[dim_name(d)]} elsewhere, "
                                 f"the array has {size}")
    plan = plan_inputs(model, dims, shapes, skip=set(files))
    seed = getattr(args, "seed", 0)
    feeds = [{**plan.feed(seed + i), **files} for i in range(count if plan.specs else 1)]
    return feeds, plan.note() if plan.specs else ""


@contextlib.contextmanager
def blame_random_inputs(args):
    """A kernel failure on made-up inputs may be the inputs' fault (a guessed dim): say how to give real ones."""
    from graphopt.errors import KernelFailed
    try:
        yield
    except KernelFailed as e:
        if getattr(args, "inputs", None):  # whole feeds came from files: nothing was made up
            raise
        raise KernelFailed(f"{e} (on random inputs with the dims noted above: set real sizes with --dim NAME=V / "
                           f"--input-shape INPUT=D0,D1,... or give real data with --input / --inputs)") from e
