"""L0 of graphopt: the IR (onnx-graphsurgeon's Graph) and everything about a model that is not a pass.

graph.py      use-def helpers every pass needs (producer, consumers, replace_all_uses, toposort, ...)
model_io.py   load/save with all checks, external data, the gs.Graph <-> ModelProto round trip
attributes.py attribute values with schema defaults, schemas, function bodies
op_traits.py  the one place for op facts (random, commutative, shape inputs, shape rules)
validate.py, limits.py, external_data.py  what a model from a stranger must satisfy

Imports only graphopt.errors."""
from graphopt.ir.external_data import external_data_files, input_files, tensors_with_external_data
from graphopt.ir.graph import (all_graphs, can_take_over, const_value, consumers, detach, fresh_name,
                               is_graph_input, is_graph_output, nested_graphs, node_count, numel, outer_reads,
                               producer, rank, replace_all_uses, static_shape, subgraphs, toposort)
from graphopt.ir.model_io import (PROTOBUF_LIMIT, export, load, load_model, prune_opset_imports, save,
                                  validate_structure)

__all__ = [
    "external_data_files", "input_files", "tensors_with_external_data",
    "all_graphs", "can_take_over", "const_value", "consumers", "detach", "fresh_name", "is_graph_input",
    "is_graph_output", "nested_graphs", "node_count", "numel", "outer_reads", "producer", "rank",
    "replace_all_uses", "static_shape", "subgraphs", "toposort",
    "PROTOBUF_LIMIT", "export", "load", "load_model", "prune_opset_imports", "save", "validate_structure",
]
