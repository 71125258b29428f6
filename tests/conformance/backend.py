"""graphopt's runtime as an onnx.backend.base.Backend, so the onnx backend test suite can drive it."""
from __future__ import annotations

import onnx
from onnx.backend.base import Backend, BackendRep

from graphopt.runtime.session import Session


class GraphoptRep(BackendRep):
    def __init__(self, model: onnx.ModelProto, device: str = "cpu"):
        self.session = Session(model, device=device)
        inits = {t.name for t in model.graph.initializer}
        self.input_names = [i.name for i in model.graph.input if i.name not in inits]

    def run(self, inputs, **kwargs):
        if isinstance(inputs, dict):
            feed = inputs
        else:
            if not isinstance(inputs, (list, tuple)):
                inputs = [inputs]
            feed = dict(zip(self.input_names, inputs))
        return tuple(self.session.run(None, feed))


class GraphoptBackend(Backend):
    @classmethod
    def prepare(cls, model: onnx.ModelProto, device: str = "CPU", **kwargs) -> GraphoptRep:
        super().prepare(model, device, **kwargs)
        return GraphoptRep(model, device.lower())

    @classmethod
    def run_model(cls, model, inputs, device="CPU", **kwargs):
        return cls.prepare(model, device, **kwargs).run(inputs)

    @classmethod
    def supports_device(cls, device: str) -> bool:
        return device.upper() == "CPU"


prepare = GraphoptBackend.prepare
run_model = GraphoptBackend.run_model
supports_device = GraphoptBackend.supports_device
