"""graphopt: a compiler for ONNX models (graph rewrites + a NumPy/CuPy runtime)."""
import os as _os

# pyproject maps the top-level passes/ and kernels/ folders into this package on install. When Python
# imports graphopt straight from a source checkout (tests run from the repo root), they sit beside this
# folder instead: let `graphopt.passes` / `graphopt.kernels` resolve there.
_checkout = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
if (not _os.path.isdir(_os.path.join(_os.path.dirname(__file__), "passes"))
        and _os.path.isfile(_os.path.join(_checkout, "passes", "__init__.py"))):
    __path__.append(_checkout)

from graphopt.compiler.pass_manager import PassContext, PassManager, PassResult, register_pass, register_rules
from graphopt.compiler.rewrite import Const, Match, Op, Rule, Var, apply_rules
from graphopt.errors import (GraphoptError, InvalidModel, LimitExceeded, Unsupported, UnsafePath, UsageError,
                             VerificationFailed)
from graphopt.ir import load, save
from graphopt.ir.limits import Limits
from graphopt.pipeline import CompileResult, compile, compile_model, load_plugin
from graphopt.version import __version__

__all__ = [
    "compile", "compile_model", "CompileResult", "load", "save", "load_plugin",
    "register_pass", "register_rules", "PassResult", "PassContext", "PassManager",
    "Rule", "Op", "Var", "Const", "Match", "apply_rules",
    "GraphoptError", "InvalidModel", "Unsupported", "LimitExceeded", "UnsafePath", "UsageError",
    "VerificationFailed", "Session", "Limits", "__version__",
]


def __getattr__(name):
    if name == "Session":  # the runtime is imported only when asked for
        from graphopt.runtime import Session
        return Session
    raise AttributeError(name)
