"""L3 of graphopt: the command line (graphopt compile | run | bench | verify | inspect | passes | kernels).
Nothing imports this package."""
from graphopt.cli.main import main

__all__ = ["main"]
