"""graphopt: a compiler for ONNX models (graph rewrites + a NumPy/CuPy runtime)."""
from .compiler import CompileResult, compile, compile_model, load_plugin
from .errors import (GraphoptError, InvalidModel, LimitExceeded, Unsupported, UnsafePath, UsageError,
                     VerificationFailed)
from .ir import load, save
from .pass_manager import PassContext, PassManager, PassResult, register_pass, register_rules
from .rewrite import Const, Match, Op, Rule, Var, apply_rules

__all__ = [
    "compile", "compile_model", "CompileResult", "load", "save", "load_plugin",
    "register_pass", "register_rules", "PassResult", "PassContext", "PassManager",
    "Rule", "Op", "Var", "Const", "Match", "apply_rules",
    "GraphoptError", "InvalidModel", "Unsupported", "LimitExceeded", "UnsafePath", "UsageError",
    "VerificationFailed", "Session",
]


def __getattr__(name):
    if name == "Session":  # the runtime is imported only when asked for
        from .session import Session
        return Session
    raise AttributeError(name)
