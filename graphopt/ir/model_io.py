"""Loading and saving models: checks, external data, the gs.Graph <-> ModelProto round trip."""
from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from google.protobuf.message import DecodeError

from graphopt.errors import GraphoptError, InvalidModel, UnsafePath, UsageError
from graphopt.ir.limits import DEFAULT as DEFAULT_LIMITS
from graphopt.ir.limits import Limits
from graphopt.ir import external_data as _external
from graphopt.ir.external_data import external_data_files, input_files, tensors_with_external_data  # noqa: F401  (part of ir)
from graphopt.ir.graph import toposort
from graphopt.ir.validate import validate_model

PROTOBUF_LIMIT = 2**31 - 1  # a serialized ModelProto cannot reach 2 GiB


# ---------------------------------------------------------------- load / save

def load_model(model_or_path, load_external_data: bool = True, limits: Limits = DEFAULT_LIMITS) -> onnx.ModelProto:
    """Read a ModelProto (path, bytes or ModelProto) and reject anything unsafe or malformed
    (graphopt.validate) before a pass sees it. External data must stay inside the model's folder."""
    if isinstance(model_or_path, onnx.ModelProto):
        validate_model(model_or_path, limits)
        return _unknown_dims_cleared(model_or_path, copy=True)
    if isinstance(model_or_path, (bytes, bytearray, memoryview)):
        model, path = _parse(bytes(model_or_path), "<bytes>"), None
    else:
        path = Path(model_or_path)
        if not path.exists():
            raise InvalidModel(f"{path}: no such file")
        if not path.is_file():
            raise InvalidModel(f"{path}: not a file")
        size = path.stat().st_size
        if size > PROTOBUF_LIMIT:  # checked before reading: protobuf could not parse it anyway
            raise InvalidModel(f"{path}: {size:,} bytes is more than a protobuf can hold (2 GiB); "
                               f"weights that large must be stored as external data")
        try:
            data = path.read_bytes()
        except OSError as e:
            raise InvalidModel(f"{path}: cannot read ({e.strerror})") from None
        model = _parse(data, str(path))
    validate_model(model, limits)  # sizes and structure first: external data is read only if they pass
    if load_external_data and any(True for _ in tensors_with_external_data(model.graph)):
        if path is None:
            raise UnsafePath("a model given as bytes cannot have external data (no folder to read it from)")
        _external.load_external_data(model, path.resolve().parent, limits)
    return _unknown_dims_cleared(model, copy=False)  # parsed here: ours to change


def _shape_dims(graph: onnx.GraphProto) -> Iterator:
    for vi in (*graph.input, *graph.output, *graph.value_info):
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.HasField("shape"):
            yield from vi.type.tensor_type.shape.dim
    for node in graph.node:
        for a in node.attribute:
            for sub in ([a.g] if a.type == onnx.AttributeProto.GRAPH else a.graphs):
                yield from _shape_dims(sub)


def _unknown_dims_cleared(model: onnx.ModelProto, copy: bool) -> onnx.ModelProto:
    """A dim of -1 in a declared shape means "unknown" to the exporters that write it (and to ONNX
    Runtime); make it an unknown dim so no pass reads it as a size. The caller's proto is not modified."""
    if not any(d.HasField("dim_value") and d.dim_value == -1 for d in _shape_dims(model.graph)):
        return model
    if copy:
        original, model = model, onnx.ModelProto()
        model.CopyFrom(original)
    for d in _shape_dims(model.graph):
        if d.HasField("dim_value") and d.dim_value == -1:
            d.Clear()
    return model


def _parse(data: bytes, where: str) -> onnx.ModelProto:
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as e:
        raise InvalidModel(f"{where}: not an ONNX model ({e.__class__.__name__}: {e})") from None
    if not model.HasField("graph") or not model.opset_import:
        raise InvalidModel(f"{where}: not an ONNX model (no graph or no opset_import)")
    return model


def validate_structure(graph: onnx.GraphProto) -> None:
    """Structure and limit checks of graphopt.validate on a bare graph (kept for callers of ir)."""
    probe = onnx.ModelProto()
    probe.graph.CopyFrom(graph)
    validate_model(probe)


def load(model_or_path, limits: Limits = DEFAULT_LIMITS, validated: bool = False) -> gs.Graph:
    """Load a model (path, bytes or ModelProto) into graphsurgeon's IR (`validated`: a ModelProto
    that load_model already returned, not checked twice)."""
    model = model_or_path if validated and isinstance(model_or_path, onnx.ModelProto) \
        else load_model(model_or_path, limits=limits)
    try:
        return gs.import_onnx(model)
    except Exception as e:  # graphsurgeon rejects some malformed graphs itself
        raise InvalidModel(f"cannot import model: {e}") from None


def export(graph: gs.Graph, template: onnx.ModelProto | None = None) -> onnx.ModelProto:
    """graphsurgeon Graph -> ModelProto, keeping the template's metadata and dropping unused opsets."""
    toposort(graph)
    model = gs.export_onnx(graph, do_type_check=False)
    if template is not None:
        model.ir_version = template.ir_version
        model.producer_name, model.producer_version = template.producer_name, template.producer_version
        model.domain, model.model_version, model.doc_string = template.domain, template.model_version, template.doc_string
        del model.metadata_props[:]
        model.metadata_props.extend(template.metadata_props)
    prune_opset_imports(model)
    _drop_outer_copies(model.graph, set())
    _hoist_shared_initializers(model.graph)
    _satisfy_ir3(model)
    return model


def _hoist_shared_initializers(main: onnx.GraphProto) -> None:
    """A weight read only inside several subgraphs is exported into each of them: keep one copy in
    the main graph instead (every subgraph may read outer-scope values)."""
    copies: dict[str, list] = {}

    def walk(g, top):
        if not top:
            for t in g.initializer:
                copies.setdefault(t.name, []).append(g)
        for node in g.node:
            for a in node.attribute:
                for sub in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
                    walk(sub, False)
    walk(main, True)
    taken = {t.name for t in main.initializer} | {i.name for i in main.input} | {o for n in main.node for o in n.output}
    for name, graphs in copies.items():
        if len(graphs) < 2 or name in taken:
            continue
        first = next(t for t in graphs[0].initializer if t.name == name)
        main.initializer.append(first)
        for g in graphs:
            keep = [t for t in g.initializer if t.name != name]
            del g.initializer[:]
            g.initializer.extend(keep)


def _drop_outer_copies(graph: onnx.GraphProto, outer: set) -> None:
    """graphsurgeon exports an outer-scope constant read by a subgraph as a copy inside the subgraph;
    drop the copies so weights are stored once (subgraphs may read outer values directly)."""
    if outer:
        keep = [t for t in graph.initializer if t.name not in outer]
        if len(keep) != len(graph.initializer):
            del graph.initializer[:]
            graph.initializer.extend(keep)
    scope = outer | {t.name for t in graph.initializer}
    for node in graph.node:
        for a in node.attribute:
            for sub in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
                _drop_outer_copies(sub, scope)


def _satisfy_ir3(model: onnx.ModelProto) -> None:
    """IR < 4 requires every initializer to be a graph input: move to IR 4 where the opset allows
    it (opset >= 9), else list the initializers as inputs."""
    if model.ir_version >= 4:
        return
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)
    if opset >= 9:
        model.ir_version = 4
        return
    listed = {i.name for i in model.graph.input}
    for t in model.graph.initializer:
        if t.name not in listed:
            model.graph.input.append(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))


def prune_opset_imports(model: onnx.ModelProto) -> None:
    """Keep the default domain and every domain some node (or local function) still uses."""
    used = {"", "ai.onnx"}

    def walk(g):
        for n in g.node:
            used.add(n.domain)
            for a in n.attribute:
                for sub in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
                    walk(sub)
    walk(model.graph)
    for f in model.functions:
        used.add(f.domain)
        for n in f.node:
            used.add(n.domain)
    keep = [o for o in model.opset_import if o.domain in used]
    del model.opset_import[:]
    model.opset_import.extend(keep)


def save(model: onnx.ModelProto | gs.Graph, path, external_data: bool | None = None, protect=()) -> Path:
    """Write atomically: a temp file in the target folder, then rename. Never a half-written output.

    external_data=None picks external data (one `<name>.data` file beside the model, never anywhere
    else) only when the model would not fit in a single protobuf. `protect`: files that must not be
    replaced (the input model and its external data, see input_files), refused with UsageError.
    """
    if isinstance(model, gs.Graph):
        model = export(model)
    path = Path(path)
    folder = path.resolve().parent
    if not folder.is_dir():
        raise GraphoptError(f"output folder '{path.parent}' does not exist")
    if external_data is None:
        external_data = _needs_external_data(model)
    guarded = {Path(os.path.realpath(p)) for p in protect}
    for target in [path] + ([folder / (path.name + ".data")] if external_data else []):
        if Path(os.path.realpath(target)) in guarded:
            raise UsageError(f"refusing to overwrite the input file '{target}' (use --force)")
    if external_data:
        _external.typed_data_to_raw(model.graph)
    tmpdir = Path(tempfile.mkdtemp(prefix=".graphopt-", dir=folder))
    try:
        tmp_model = tmpdir / path.name
        if external_data:
            data_name = path.name + ".data"
            onnx.save_model(model, str(tmp_model), save_as_external_data=True, all_tensors_to_one_file=True,
                            location=data_name, size_threshold=1024)
            if (tmpdir / data_name).exists():
                os.replace(tmpdir / data_name, folder / data_name)
        else:
            onnx.save_model(model, str(tmp_model))
        os.replace(tmp_model, path)
    finally:
        for leftover in tmpdir.iterdir():
            leftover.unlink()
        tmpdir.rmdir()
    return path


def _needs_external_data(model: onnx.ModelProto) -> bool:
    total = 0
    for t in model.graph.initializer:
        total += len(t.raw_data) or 4 * (len(t.float_data) + len(t.int32_data)) + 8 * len(t.int64_data)
        if total > PROTOBUF_LIMIT - (64 << 20):  # headroom for the graph itself
            return True
    return False
