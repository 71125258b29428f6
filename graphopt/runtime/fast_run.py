"""Session.run's common case as one generated function: the feed checks and the plan call inlined.

The common case is a feed of exactly the model's required inputs, each a plain ndarray of the
declared dtype, rank and fixed dims: then no conversion or message is needed and the plan takes
the arrays as they are. Written as a loop over the inputs (a tuple unpack, a dict lookup and a
checker call per input), the checks cost about 1 us per run, a tenth of a small model's time. The
generated function does them as straight-line comparisons against its globals, e.g. for one input
of declared shape (1, 3):

    def _fast(feed):
        if len(feed) != 1:
            return None
        v0 = feed.get('x')
        if type(v0) is not _ndarray or v0.shape != _shape0 or v0.dtype != _dtype0:
            return None
        _limit()
        _o = _run([v0], None) if _run is not None else _first([v0])
        if type(_o[0]) is _ndarray:
            return _o
        return _outputs(_o)

Anything else returns None and run takes its general path, which converts or explains.
"""
from __future__ import annotations

import numpy as np

from graphopt.runtime.plan.specialize import signature

MAX_INLINE_OUTPUT_CHECKS = 16  # outputs checked by generated compares (0.1-0.2 us less than a loop)


def _spec_test(j: int, spec, env: dict) -> str:
    """The condition under which input j (a _fast_spec) does NOT fit, as source."""
    dtype, rank, fixed = spec
    env[f"_dtype{j}"] = dtype
    v = f"v{j}"
    if len(fixed) == rank:  # every dim declared: one tuple compare
        env[f"_shape{j}"] = tuple(d for _, d in fixed)
        return f"type({v}) is not _ndarray or {v}.shape != _shape{j} or {v}.dtype != _dtype{j}"
    dims = "".join(f" or {v}.shape[{i}] != {d}" for i, d in fixed)
    return f"type({v}) is not _ndarray or {v}.ndim != {rank}{dims} or {v}.dtype != _dtype{j}"


def build_fast_run(specs: list, input_defaults: list, plan, limit, as_outputs):
    """fn(feed) -> outputs or None (see the module doc). `specs`: (name, _fast_spec) per required
    input; `input_defaults`: (name, default) per plan input, required or an overridable initializer.

    When every dim is declared, every feed that passes has one shape signature: the function then
    binds, after its first run, the plan's compiled function for that signature (one specialized
    for it, see runtime/plan/specialize.py), and later runs call it directly."""
    required = dict(specs)
    env = {"_ndarray": np.ndarray, "_limit": limit, "_outputs": as_outputs, "_run": None}
    lines = ["def _fast(feed):", f"    if len(feed) != {len(required)}:", "        return None"]
    args = []
    for j, (name, default) in enumerate(input_defaults):
        if name not in required:  # an initializer the caller may override, not fed here
            env[f"_default{j}"] = default
            args.append(f"_default{j}")
            continue
        lines.append(f"    v{j} = feed.get({name!r})")
        lines.append(f"    if {_spec_test(j, required[name], env)}:")
        lines.append("        return None")
        args.append(f"v{j}")
    if limit is not None:
        lines.append("    _limit()")
    ins = f"[{', '.join(args)}]"
    static = all(len(spec[2]) == spec[1] for spec in required.values())
    if static:
        lines.append(f"    _o = _run({ins}, None) if _run is not None else _first({ins})")
    else:
        lines.append(f"    _o = _run_inputs({ins})")
    # outputs that are all ndarrays (the rule) go back as they are; _outputs converts the others
    n_out = len(plan.output_slots)
    if 0 < n_out <= MAX_INLINE_OUTPUT_CHECKS:
        checks = " and ".join(f"type(_o[{k}]) is _ndarray" for k in range(n_out))
        lines.append(f"    if {checks}:\n        return _o")
    lines.append("    return _outputs(_o)")
    env["_run_inputs"] = plan.run_inputs

    def first(ins):
        """The first run(s) of a static model: through run_inputs, which specializes the plan for
        the signature once it has seen it twice; then that function is bound for the later runs."""
        sig = signature(ins)
        outputs = plan.run_inputs(ins, None, sig)
        fn = plan.compiled_for(sig)
        if fn is not None:
            env["_run"] = fn
        return outputs
    env["_first"] = first
    exec(compile("\n".join(lines) + "\n", "<graphopt fast run>", "exec"), env)  # noqa: S102  (generated above)
    return env["_fast"]
