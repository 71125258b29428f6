"""What a model contains and what compile did to it: counts, op histogram, params, per-pass stats."""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field

import numpy as np
import onnx


@dataclass
class ModelSummary:
    nodes: int
    initializers: int
    parameters: int
    parameter_bytes: int
    ops: dict
    opsets: dict
    inputs: list
    outputs: list


def walk_nodes(graph: onnx.GraphProto):
    """Every node of the graph and, depth first, of its If/Loop/Scan bodies."""
    for node in graph.node:
        yield node
        for a in node.attribute:
            for sub in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
                yield from walk_nodes(sub)


def _walk_initializers(graph: onnx.GraphProto):
    yield from graph.initializer
    for node in graph.node:
        for a in node.attribute:
            for sub in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
                yield from _walk_initializers(sub)


def _value_info(vi: onnx.ValueInfoProto) -> dict:
    tt = vi.type.tensor_type
    shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in tt.shape.dim] \
        if tt.HasField("shape") else None
    dtype = onnx.TensorProto.DataType.Name(tt.elem_type) if tt.elem_type else "?"
    return {"name": vi.name, "dtype": dtype.lower(), "shape": shape}


def summarize(model: onnx.ModelProto) -> ModelSummary:
    ops = Counter()
    for node in walk_nodes(model.graph):
        ops[f"{node.domain}::{node.op_type}" if node.domain not in ("", "ai.onnx") else node.op_type] += 1
    params = nbytes = inits = 0
    # weights held in Constant nodes (as some exporters write them) are parameters too
    constants = [a.t for n in walk_nodes(model.graph) if n.op_type == "Constant" and n.domain in ("", "ai.onnx")
                 for a in n.attribute if a.name == "value" and a.type == onnx.AttributeProto.TENSOR]
    initializers = list(_walk_initializers(model.graph))
    inits = len(initializers)
    for t in initializers + constants:
        count = int(np.prod(t.dims, dtype=np.int64)) if len(t.dims) else 1
        params += count
        try:
            nbytes += count * np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize
        except (KeyError, TypeError):
            pass
    init_names = {t.name for t in model.graph.initializer}
    return ModelSummary(
        nodes=sum(ops.values()), initializers=inits, parameters=params, parameter_bytes=nbytes,
        ops=dict(ops.most_common()), opsets={o.domain or "ai.onnx": o.version for o in model.opset_import},
        inputs=[_value_info(i) for i in model.graph.input if i.name not in init_names],
        outputs=[_value_info(o) for o in model.graph.output])


@dataclass
class CompileReport:
    before: ModelSummary
    after: ModelSummary
    passes: list = field(default_factory=list)  # dicts: name, iteration, seconds, changed, stats, skipped
    seconds: float = 0.0
    trace: list = field(default_factory=list)
    near_misses: dict = field(default_factory=dict)
    printed: list = field(default_factory=list)

    def pass_totals(self) -> dict:
        """Per pass name: runs, total seconds, summed stats."""
        totals: dict = {}
        for rec in self.passes:
            t = totals.setdefault(rec["name"], {"runs": 0, "seconds": 0.0, "stats": Counter()})
            t["runs"] += 0 if rec["skipped"] else 1
            t["seconds"] += rec["seconds"]
            t["stats"].update(rec["stats"])
        return totals

    def to_json(self) -> str:
        data = asdict(self)
        data["pass_totals"] = {k: {**v, "stats": dict(v["stats"])} for k, v in self.pass_totals().items()}
        return json.dumps(data, indent=2, default=str)

    def to_text(self) -> str:
        b, a = self.before, self.after
        lines = [
            f"{'':14}{'before':>12}{'after':>12}",
            f"{'nodes':14}{b.nodes:>12}{a.nodes:>12}",
            f"{'initializers':14}{b.initializers:>12}{a.initializers:>12}",
            f"{'parameters':14}{b.parameters:>12}{a.parameters:>12}",
            f"{'size':14}{_mib(b.parameter_bytes):>12}{_mib(a.parameter_bytes):>12}",
            f"compiled in {self.seconds:.2f} s",
            "",
            f"{'pass':24}{'runs':>5}{'seconds':>9}  hits",
        ]
        for name, t in self.pass_totals().items():
            hits = ", ".join(f"{k}={v}" for k, v in sorted(t["stats"].items()) if v) or "-"
            lines.append(f"{name:24}{t['runs']:>5}{t['seconds']:>9.3f}  {hits}")
        skipped = [r for r in self.passes if r["skipped"]]
        if skipped:
            lines.append(f"bisect: skipped {len(skipped)} pass run(s), first: {skipped[0]['name']} "
                         f"(iteration {skipped[0]['iteration']})")
        return "\n".join(lines)


def _mib(n: int) -> str:
    return f"{n / 2**20:.2f} MiB"
