"""One error hierarchy for everything a user can cause.

The CLI prints `graphopt: error: <message>` and exits 1 for any GraphoptError; a traceback is
shown only with --debug. Messages name the node, tensor or file at fault.
"""


class GraphoptError(Exception):
    """Base class: a problem with the user's model, options or environment (not a graphopt bug)."""


class InvalidModel(GraphoptError):
    """The file is not a well-formed ONNX model (bad protobuf, cycle, undefined input, ...)."""


class Unsupported(GraphoptError):
    """Valid ONNX, but graphopt cannot handle it (unknown op in the runtime, unknown dtype, ...)."""


class LimitExceeded(GraphoptError):
    """A configured resource limit (tensor size, nesting depth, iterations, ...) would be passed."""


class UnsafePath(GraphoptError):
    """A path (external data, output) points somewhere graphopt must not read or write."""


class VerificationFailed(GraphoptError):
    """A rewritten model no longer matches the original (checker or numeric comparison)."""


class UsageError(GraphoptError):
    """Bad options or arguments (the CLI exits 2 for these)."""


class KernelFailed(GraphoptError):
    """A runtime kernel raised while a plan ran; the message names the node and its op."""
