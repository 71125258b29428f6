"""L1 of graphopt: the machinery passes are written in.

rewrite.py       the rule engine (patterns as data, a reason on refusal, --trace)
pass_manager.py  the pass registry, opt levels, PassManager and its instruments
targets.py       output targets (onnx, ort, graphopt), opsets, and how fused ops are spelled per target
report.py        what a compile did, as text and JSON

The compile entry point that loads the built-in passes is graphopt.pipeline (above graphopt.passes)."""
