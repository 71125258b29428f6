"""L1 of graphopt: the runtime. `Session(model, device="cpu"|"gpu")`, shaped like
onnxruntime.InferenceSession.

io_spec.py   inputs/outputs (NodeArg) and the feed checks both sessions share
session.py   the CPU Session; fast_run.py its generated common-case run
plan/        build, codegen, specialize, inline, functions, profile (a public builder API)
host/        memory kept between runs, BLAS thread caps
gpu/         the CuPy session and plan, built on plan's public API; registers device "gpu"

Imports graphopt.ir and graphopt.kernels; never the compiler, the passes or the lossy steps."""
from graphopt.runtime.session import Session
from graphopt.runtime.gpu import session as _gpu_session  # noqa: F401  (registers device="gpu"; imports no CuPy)

__all__ = ["Session"]
