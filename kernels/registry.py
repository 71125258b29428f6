"""Kernel table: one function per (domain, op, since_version, device).

A kernel is `fn(inputs, attrs) -> tuple | list` where `inputs` is a list of NumPy arrays (None for an
absent optional input; Python lists for sequences) and `attrs` maps every attribute of the op's
schema to its value, with the schema default filled in (None where the schema has no default).
`lookup` picks the highest `since` that is <= the model's opset for the op's domain, as ONNX
versioning says: an op keeps its semantics until the opset that redefines it.
"""
from __future__ import annotations

import bisect
from typing import Callable

from graphopt.ir.attributes import norm_domain
from graphopt.ir.op_traits import register_shape_rule

KernelFn = Callable[[list, dict], "tuple | list"]

# (domain, op, device) -> sorted list of (since, fn)
_TABLE: dict[tuple[str, str, str], list[tuple[int, KernelFn]]] = {}


def kernel(op: str, since: int = 1, device: str = "cpu", domain: str = "", shape_from_shapes: bool = False):
    """Register the decorated function as the kernel of `op` from opset `since` on.
    shape_from_shapes: the op's output shapes follow from its input shapes and attributes alone (an
    op fact, recorded in graphopt.ir.op_traits; standard ops have theirs listed there already)."""
    if shape_from_shapes:
        register_shape_rule(norm_domain(domain), op)

    def register(fn: KernelFn) -> KernelFn:
        versions = _TABLE.setdefault((norm_domain(domain), op, device), [])
        versions[:] = [v for v in versions if v[0] != since]  # a re-registration replaces
        bisect.insort(versions, (since, fn), key=lambda v: v[0])
        return fn

    return register


def unregister(op: str, domain: str = "", device: str = "cpu") -> None:
    """Forget every kernel and prepare hook of `op` (a plugin's, when a test or tool unloads it)."""
    _TABLE.pop((norm_domain(domain), op, device), None)
    _PREPARE.pop((norm_domain(domain), op, device), None)


def lookup(domain: str, op: str, opset: int, device: str = "cpu") -> KernelFn | None:
    """The kernel with the highest `since` <= `opset`, or None."""
    versions = _TABLE.get((norm_domain(domain), op, device))
    if not versions:
        return None
    best = None
    for since, fn in versions:
        if since <= opset:
            best = fn
    return best


class _Dynamic:
    def __repr__(self):
        return "DYNAMIC"


DYNAMIC = _Dynamic()  # in a prepare hook's `constants`: an input that is computed at run time

# (domain, op, device) -> sorted list of (since, prepare); see `prepare`
_PREPARE: dict[tuple[str, str, str], list[tuple[int, Callable]]] = {}


def prepare(op: str, since: int = 1, device: str = "cpu", domain: str = ""):
    """Register a build-time specializer for `op` from opset `since` on:
    `prep(attrs, constants, generic) -> fn | None`, where `constants` holds, per formal input, its
    value when it is a constant, DYNAMIC when it is computed at run time, None when it is absent,
    and `generic` is the op's kernel. It returns a kernel
    specialized for those constants (weights laid out once, not at every run), or None to keep
    the generic one. Prepared kernels must give the generic kernel's results."""

    def register(fn: Callable) -> Callable:
        versions = _PREPARE.setdefault((norm_domain(domain), op, device), [])
        versions[:] = [v for v in versions if v[0] != since]
        bisect.insort(versions, (since, fn), key=lambda v: v[0])
        return fn

    return register


def kernel_from_attributes(op: str, make: Callable, since: int = 1, device: str = "cpu", domain: str = "") -> None:
    """Register an op whose work is set up from its attributes alone, `make(attrs) -> fn(inputs)`: the
    kernel sets it up at every call, the prepare hook once at build (model-converter ops such as
    tree ensembles, linear models and scalers, whose set-up costs more than a run)."""
    def run(ins, at):
        return make(at)(ins)

    def prep(at, constants, generic):
        return make(at)

    run.__wrapped__ = prep.__wrapped__ = make  # `graphopt kernels` lists the op at `make`
    kernel(op, since, device, domain)(run)
    prepare(op, since, device, domain)(prep)


def contrib_alias(op: str, fn: KernelFn, hook: Callable | None = None, defaults: dict | None = None,
                  domain: str = "com.microsoft") -> None:
    """Register `fn` (and its prepare hook) as another domain's op of the same semantics (ONNX
    Runtime's com.microsoft ops), with that op's attribute defaults filled in where a node leaves
    them out (contrib schemas are not in the onnx package, so nothing else fills them)."""
    if defaults:
        fn, hook = _with_defaults(fn, defaults), hook and _with_defaults(hook, defaults, attrs_first=True)
    kernel(op, 1, domain=domain)(fn)
    if hook is not None:
        prepare(op, 1, domain=domain)(hook)


def _with_defaults(f: Callable, defaults: dict, attrs_first: bool = False) -> Callable:
    """f with the attributes a node leaves out taken from `defaults` (kernels take attrs second,
    prepare hooks first); it keeps f's refuse hook, and `graphopt kernels` lists it at f."""
    if attrs_first:
        def filled(at, *rest):
            return f({**defaults, **at}, *rest)
    else:
        def filled(ins, at):
            return f(ins, {**defaults, **at})
    filled.__wrapped__ = f
    if getattr(f, "refuse", None) is not None:
        filled.refuse = f.refuse
    return filled


def lookup_prepare(domain: str, op: str, opset: int, device: str = "cpu") -> Callable | None:
    """The prepare hook with the highest `since` <= `opset`, or None."""
    best = None
    for since, fn in _PREPARE.get((norm_domain(domain), op, device), ()):
        if since <= opset:
            best = fn
    return best


def registered(device: str = "cpu") -> list[tuple[str, str, int]]:
    """Every (domain, op, since) registered for `device`, for reports and tests."""
    return sorted((d, op, s) for (d, op, dev), vs in _TABLE.items() if dev == device for s, _ in vs)


def table() -> list[tuple[str, str, int, str, Callable, Callable | None]]:
    """Every registered kernel as (domain, op, since, device, kernel, its prepare hook or None),
    for `graphopt kernels`."""
    rows = []
    for (d, op, dev), versions in _TABLE.items():
        for since, fn in versions:
            rows.append((d, op, since, dev, fn, lookup_prepare(d, op, since, dev)))
    return sorted(rows, key=lambda r: r[:4])
