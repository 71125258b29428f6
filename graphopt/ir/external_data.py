"""External data: read it only from inside the model's folder, and only the bytes the dims need.

Refused (UnsafePath): absolute locations, `..`, backslashes, anything whose real path (symlinks
resolved) leaves the folder, files that are not regular files (FIFOs, devices), and files with more
than one hard link: a hard link's other names cannot be found from its path, so one inside the
folder may be the same file as one outside it (Limits.allow_hardlinks / --allow-hardlinks accepts
them). Ranges are checked against the file size and the tensor's dims before anything is read.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Iterator

import onnx

from graphopt.errors import InvalidModel, UnsafePath, Unsupported
from graphopt.ir.limits import Limits
from graphopt.ir.validate import tensor_bytes


def tensors_with_external_data(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    for t in graph.initializer:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            yield t
    for s in graph.sparse_initializer:
        for t in (s.values, s.indices):
            if t.data_location == onnx.TensorProto.EXTERNAL:
                yield t
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR and attr.t.data_location == onnx.TensorProto.EXTERNAL:
                yield attr.t
            for sub in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)):
                yield from tensors_with_external_data(sub)


def external_data_files(model: onnx.ModelProto, base: Path) -> set[Path]:
    """The files a model's external data lives in (resolved), e.g. to protect them from overwriting."""
    files = set()
    for t in tensors_with_external_data(model.graph):
        location = next((e.value for e in t.external_data if e.key == "location"), "")
        if location and not os.path.isabs(location):
            files.add(Path(os.path.realpath(base / location)))
    return files


def load_external_data(model: onnx.ModelProto, base: Path, limits: Limits) -> None:
    """Read external data, refusing any location outside `base` (absolute, `..`, symlinks, other
    hard links unless allowed), ranges outside the file, and lengths that disagree with the dims."""
    for t in tensors_with_external_data(model.graph):
        info = {e.key: e.value for e in t.external_data}
        location = info.get("location", "")
        if not location or os.path.isabs(location) or ".." in Path(location).parts or "\\" in location:
            raise UnsafePath(f"tensor '{t.name}': external data location '{location}' is not a plain relative path")
        real = Path(os.path.realpath(base / location))
        if base != real and base not in real.parents:
            raise UnsafePath(f"tensor '{t.name}': external data '{location}' resolves outside the model's folder")
        try:
            fd = os.open(real, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
        except OSError:
            raise InvalidModel(f"tensor '{t.name}': external data file '{location}' not found") from None
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise UnsafePath(f"tensor '{t.name}': external data '{location}' is not a regular file")
            if st.st_nlink > 1 and not limits.allow_hardlinks:
                # another name of this file may lie anywhere on the file system: a path check cannot tell
                raise UnsafePath(f"tensor '{t.name}': external data '{location}' has {st.st_nlink} hard links "
                                 f"(its other names may be outside the model's folder; --allow-hardlinks accepts it)")
            t.raw_data = _read_range(f, st.st_size, t, info, location)
        del t.external_data[:]
        t.data_location = onnx.TensorProto.DEFAULT


def _read_range(f, size: int, t: onnx.TensorProto, info: dict, location: str) -> bytes:
    """Check offset/length against the file and the tensor's dims, then read exactly that many bytes."""
    try:
        offset = int(info.get("offset", 0))
        length = int(info["length"]) if "length" in info else None
    except ValueError:
        raise InvalidModel(f"tensor '{t.name}': external data offset/length are not integers") from None
    want = tensor_bytes(t)
    if want is None:
        raise Unsupported(f"tensor '{t.name}': string tensors cannot be stored as external data")
    if length is not None and length != want:
        raise InvalidModel(f"tensor '{t.name}': external data length {length} does not match its dims "
                           f"{list(t.dims)} ({want} bytes)")
    if offset < 0 or offset + want > size:
        raise InvalidModel(f"tensor '{t.name}': external data range [{offset}, {offset + want}) "
                           f"is outside '{location}' ({size} bytes)")
    f.seek(offset)
    data = f.read(want)
    if len(data) != want:  # the file shrank while we read it
        raise InvalidModel(f"tensor '{t.name}': external data '{location}' is shorter than expected")
    return data


def input_files(path) -> set[Path]:
    """A model file and its external data files (resolved): what writing must not replace."""
    path = Path(path)
    files = {Path(os.path.realpath(path))}
    try:
        model = onnx.load_model(str(path), load_external_data=False)
    except Exception:  # not readable as a model: only the file itself
        return files
    return files | external_data_files(model, path.resolve().parent)


def typed_data_to_raw(graph: onnx.GraphProto, threshold: int = 1024) -> None:
    """onnx moves only raw_data to external files: store big float_data/int64_data/... weights
    (as parsed from text, or kept untouched by graphsurgeon) as raw_data first."""
    for t in graph.initializer:
        if (t.data_location != onnx.TensorProto.EXTERNAL and not t.HasField("raw_data")
                and t.data_type != onnx.TensorProto.STRING and (tensor_bytes(t) or 0) >= threshold):
            try:
                raw = onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(t), t.name)
            except (TypeError, ValueError):  # an exotic type numpy_helper cannot round-trip: stays inline
                continue
            if raw.data_type == t.data_type:
                t.CopyFrom(raw)
    for node in graph.node:
        for a in node.attribute:
            for sub in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
                typed_data_to_raw(sub, threshold)
