"""Built-in passes. Importing this package registers them; registration order is pipeline order."""
from . import infer_shapes, fold, fold_if, cleanup  # noqa: F401  (inference first: its shapes feed folding and the no-op rules)
from . import fusion  # noqa: F401,E402  (O2 fusions run after cleanup)
