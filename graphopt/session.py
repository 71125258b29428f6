"""Old import path (graphopt.session), kept for one release: see graphopt.runtime (Session) and graphopt.errors."""
from graphopt.errors import KernelFailed  # noqa: F401
from graphopt.runtime.session import *  # noqa: F401,F403
