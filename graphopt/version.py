"""graphopt's version: the installed distribution's, else pyproject's (a source checkout run in place)."""
from importlib import metadata

try:
    __version__ = metadata.version("graphopt")
except metadata.PackageNotFoundError:
    __version__ = "0.1.0"
