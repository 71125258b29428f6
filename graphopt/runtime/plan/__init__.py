"""The execution plan: a graph compiled once into steps over numbered slots (build.py), run as one
generated function (codegen.py), specialized per input-shape signature (specialize.py), with local
functions inlined (inline.py) or run as nested plans (functions.py), and profiled on request
(profile.py).

The public builder API below is what other runtimes (runtime/gpu) build on."""
from graphopt.errors import KernelFailed
from graphopt.ir.attributes import opset_map
from graphopt.runtime.plan.build import (FOLD_LIMIT_BYTES, BuildContext, Plan, bind_node, constant_value,
                                         formal_inputs, runs_nested_plans, toposort_nodes)
from graphopt.runtime.plan.profile import Profile

__all__ = ["FOLD_LIMIT_BYTES", "BuildContext", "KernelFailed", "Plan", "Profile", "bind_node", "constant_value",
           "formal_inputs", "opset_map", "runs_nested_plans", "toposort_nodes"]
