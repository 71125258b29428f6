"""Old import path (graphopt.rewrite), kept for one release: the rule engine is graphopt.compiler.rewrite."""
from graphopt.compiler.rewrite import *  # noqa: F401,F403
