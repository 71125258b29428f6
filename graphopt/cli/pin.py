"""compile --dim NAME=V / --input-shape NAME=D0,D1,...: pin the model's symbolic input dims before
the passes run (graphopt/ir/pin_inputs.py), so shape chains fold completely. The compiled model has
those static input shapes; the check after compiling still runs the unpinned input model."""
from __future__ import annotations

from graphopt.errors import UsageError


def _sizes(option: str, name: str, text: str, one: bool) -> list[int]:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        values = []
    if not values or any(v < 0 for v in values) or (one and len(values) != 1):
        raise UsageError(f"{option} {name}={text}: expected {'a size >= 0' if one else 'sizes >= 0 as D0,D1,...'}")
    return values


def requested(args) -> bool:
    return bool(getattr(args, "dim", None) or getattr(args, "input_shape", None))


def pinned_model(args, model):
    """`model` (a ModelProto) with the sizes the options give; UsageError for an unknown name or a rank
    mismatch (before anything is compiled or written)."""
    from graphopt.ir.pin_inputs import pin_input_shapes
    dims = {name: _sizes("--dim", name, v, True)[0] for name, v in getattr(args, "dim", [])}
    shapes = {name: _sizes("--input-shape", name, v, False) for name, v in getattr(args, "input_shape", [])}
    return pin_input_shapes(model, dims, shapes)
