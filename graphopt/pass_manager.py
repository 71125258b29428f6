"""Old import path (graphopt.pass_manager), kept for one release: see graphopt.compiler.pass_manager."""
from graphopt.compiler.pass_manager import *  # noqa: F401,F403
