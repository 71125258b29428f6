"""Built-in passes. Importing this package registers them; registration order is pipeline order."""
from . import fold, cleanup  # noqa: F401  (fold first: inferred shapes feed the no-op rules)
from . import fusion  # noqa: F401,E402  (O2 fusions run after cleanup)
