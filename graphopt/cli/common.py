"""Helpers every runtime-facing command shares: loading the model argument, the --device options,
and telling whether ONNX Runtime can load a model at all."""
from __future__ import annotations

import os

import onnx

from graphopt.errors import GraphoptError


def load_model_file(path: str) -> onnx.ModelProto:
    """The model argument of run/bench/verify, with the loader's checks. A missing file exits 1 as in
    every command (the API's Session raises UsageError for it, as onnxruntime does)."""
    from graphopt.runtime.session import load_model
    if not os.path.exists(path):
        raise GraphoptError(f"model file not found: {path}")
    return load_model(path)


def session_options(args) -> dict:
    """Session options from --device / --gpu-fallback (nothing for the CPU: its call stays as it was)."""
    if getattr(args, "device", "cpu") == "gpu":
        return {"device": "gpu", "gpu_fallback": args.gpu_fallback}
    return {}


def has_graphopt_ops(model: onnx.ModelProto) -> bool:
    """ONNX Runtime cannot load graphopt's own fused ops (`compile --target graphopt`): such a model
    runs only in graphopt's runtime."""
    from graphopt.compiler.report import walk_nodes
    return any(n.domain == "ai.graphopt" for n in walk_nodes(model.graph))
