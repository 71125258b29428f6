"""What recovery (prune_recover.py) reads from the models: ORT sessions computing only the tensors
asked for, and the rows of one layer's least-squares problem (im2col patches of a Conv's input at
sampled output positions, a dense layer's input rows) with the teacher's outputs at the same places."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from graphopt.ir.graph import node_subgraph_reads

from .prune_base import attr


def prefix_session(model: onnx.ModelProto, outputs: list[str]):
    """An ORT session computing just `outputs` (the nodes they need; graph inputs kept)."""
    import onnxruntime as ort
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    producer = {o: n for n in g.node for o in n.output if o}
    need, stack, keep_nodes = set(), list(outputs), set()
    while stack:
        t = stack.pop()
        if t in need:
            continue
        need.add(t)
        n = producer.get(t)
        if n is not None and id(n) not in keep_nodes:
            keep_nodes.add(id(n))
            stack.extend(i for i in n.input if i)
            stack.extend(node_subgraph_reads(n))
    nodes = [n for n in g.node if id(n) in keep_nodes]
    del g.node[:]
    g.node.extend(nodes)
    del g.output[:]
    g.output.extend(helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None) for t in outputs)
    inits = [t for t in g.initializer if t.name in need]
    del g.initializer[:]
    g.initializer.extend(inits)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    return ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def dense_rows(layer, x, y, limit, rng):
    k = x.shape[-1]
    x2, y2 = x.reshape(-1, k), y.reshape(-1, y.shape[-1])[:, layer.keep]
    if x2.shape[0] > limit:
        pick = rng.choice(x2.shape[0], limit, replace=False)
        x2, y2 = x2[pick], y2[pick]
    return x2.astype(np.float64), y2.astype(np.float64)


def conv_rows(layer, x, y, limit, rng):
    """im2col patches [rows, groups, C/g * k] at sampled output positions, and the teacher's outputs
    there [rows, groups, out/g] (kept channels only)."""
    node = layer.node
    if x.ndim == 3:  # 1-D conv: a 2-D one of height 1
        x, y = x[:, :, None], y[:, :, None]
    n, c, h, wd = x.shape
    kh, kw = layer.kernel
    strides = list(attr(node, "strides", [])) or [1, 1]
    dil = list(attr(node, "dilations", [])) or [1, 1]
    strides, dil = ([1] * (2 - len(strides)) + strides, [1] * (2 - len(dil)) + dil)
    ho, wo = y.shape[2], y.shape[3]
    pads = pads_2d(node, (h, wd), (ho, wo), (kh, kw), strides, dil)
    xp = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    total = n * ho * wo
    pick = rng.choice(total, limit, replace=False) if total > limit else np.arange(total)
    bi, oh, ow = np.unravel_index(pick, (n, ho, wo))
    rh = oh[:, None] * strides[0] + np.arange(kh) * dil[0]
    rw = ow[:, None] * strides[1] + np.arange(kw) * dil[1]
    patches = xp[bi[:, None, None, None], np.arange(c)[None, :, None, None], rh[:, None, :, None], rw[:, None, None, :]]
    g = layer.groups
    rows_x = patches.reshape(len(pick), g, -1).astype(np.float64)
    rows_y = y[bi, :, oh, ow][:, layer.keep].reshape(len(pick), g, -1).astype(np.float64)
    return (rows_x[:, 0], rows_y[:, 0]) if g == 1 else (rows_x, rows_y)


def pads_2d(node, size, out, kernel, strides, dil):
    """(top, left, bottom, right), from pads or auto_pad (SAME_*: from the output size)."""
    auto = attr(node, "auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        pads = []
        for i in range(2):
            total = max(0, (out[i] - 1) * strides[i] + (kernel[i] - 1) * dil[i] + 1 - size[i])
            small = total // 2
            pads.append((total - small, small) if auto == "SAME_LOWER" else (small, total - small))
        return [pads[0][0], pads[1][0], pads[0][1], pads[1][1]]
    p = list(attr(node, "pads", [])) or [0, 0, 0, 0]
    if len(p) == 2:  # 1-D: [begin, end]
        return [0, p[0], 0, p[1]]
    return p
