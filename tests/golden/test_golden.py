"""Golden tests: every model under models/ and every light-zoo model in the onnx package, compiled at
O0-O3, must pass onnx.checker and reproduce the outputs ONNX Runtime computed on the original.

models/: expected outputs are models/<name>/golden.npz (regenerate: python -m graphopt.golden --update).
light zoo: the packaged light_*_output_0.pb belong to other inputs, so the reference is ONNX Runtime
(optimizations off) on the original model with a seeded random input, computed here.
"""
from __future__ import annotations

import functools
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import graphopt
from graphopt import golden
from graphopt.compiler.report import walk_nodes
from graphopt.verify import random_feed

LEVELS = [0, 1, 2, 3]
ZOO_LEVELS = [0, 1, 2, 3]
REQUIRED = {"convnet", "transformer_block", "shape_chain", "if_subgraph", "custom_domain", "external_data"}
MODELS = golden.list_models()
ZOO = sorted((Path(onnx.__file__).parent / "backend" / "test" / "data" / "light").glob("light_*.onnx"))


def _custom_nodes(model: onnx.ModelProto) -> Counter:
    """Calls of model-local functions (custom-domain ops), with their attributes and arity (the
    value names may change when cleanup removes the ops around them)."""
    local = {(f.domain, f.name) for f in model.functions}
    return Counter((n.domain, n.op_type, len(n.input), len(n.output),
                    tuple(a.SerializeToString(deterministic=True) for a in n.attribute))
                   for n in walk_nodes(model.graph) if (n.domain, n.op_type) in local)


def _real_inputs(model: onnx.ModelProto) -> list[str]:
    """Graph inputs a caller feeds (IR < 4 models also list their initializers as inputs)."""
    inits = {t.name for t in model.graph.initializer}
    return [i.name for i in model.graph.input if i.name not in inits]


def _run_ort(model: onnx.ModelProto, feed: dict) -> dict:
    return golden.reference_outputs(model, feed)


def _run_graphopt(model: onnx.ModelProto, feed: dict) -> dict:
    """--target graphopt outputs hold ai.graphopt ops that only graphopt's runtime executes."""
    names = [o.name for o in model.graph.output]
    return dict(zip(names, graphopt.Session(model).run(None, feed)))


def _compile_and_check(path: Path, level: int, inputs: dict, expected: dict, target: str = "onnx") -> onnx.ModelProto:
    """Compile from the file, check it, run it in ONNX Runtime (graphopt's runtime for target graphopt),
    compare; the input files must not change."""
    files = golden.model_files(path.parent.name) if path.parent.parent == golden.models_dir() else [path]
    before = golden.fingerprint(files)
    compiled = graphopt.compile_model(path, level=level, target=target).model
    assert golden.fingerprint(files) == before, "compiling modified the input model's files"
    onnx.checker.check_model(compiled, full_check=True)
    assert sorted(_real_inputs(compiled)) == sorted(inputs), "the compiled model's inputs changed"
    got = (_run_graphopt if target == "graphopt" else _run_ort)(compiled, inputs)
    problems = golden.compare(expected, got)
    where = path.parent.name if path.name == "model.onnx" else path.stem
    assert not problems, f"{where} O{level} --target {target}: " + "; ".join(problems)
    return compiled


# ---------------------------------------------------------------- models/

def test_required_models_exist():
    assert REQUIRED <= set(MODELS), f"missing golden models: {sorted(REQUIRED - set(MODELS))}"


@pytest.mark.parametrize("name", MODELS)
def test_golden_files_are_consistent(name):
    """golden.npz matches the stored model: its inputs are the model's inputs, and ONNX Runtime on the
    stored model reproduces its outputs; the model stays small."""
    g = golden.load_golden(name)
    model = onnx.load_model(str(golden.model_path(name)), load_external_data=False)
    assert sorted(g.inputs) == sorted(_real_inputs(model))
    assert list(g.outputs) == [o.name for o in model.graph.output]
    assert not golden.compare(g.outputs, golden.reference_outputs(golden.model_path(name), g.inputs))
    assert sum(f.stat().st_size for f in golden.model_files(name)) < 1 << 20


@pytest.mark.parametrize("level", LEVELS, ids=lambda lv: f"O{lv}")
@pytest.mark.parametrize("name", MODELS)
def test_golden_model(name, level):
    g = golden.load_golden(name)
    path = golden.model_path(name)
    compiled = _compile_and_check(path, level, g.inputs, g.outputs)
    original = onnx.load_model(str(path))
    if original.functions:  # custom-domain ops pass through untouched, with their definitions
        assert _custom_nodes(compiled) == _custom_nodes(original), "custom-domain nodes changed"
        want = {(f.domain, f.name): f.SerializeToString(deterministic=True) for f in original.functions}
        have = {(f.domain, f.name): f.SerializeToString(deterministic=True) for f in compiled.functions}
        assert {k: have.get(k) for k in want} == want, "model-local functions changed or were dropped"
        domains = {o.domain: o.version for o in compiled.opset_import}
        for o in original.opset_import:
            if any(f.domain == o.domain for f in original.functions):
                assert domains.get(o.domain) == o.version, f"opset import of '{o.domain}' lost"


TARGETS = ["ort", "graphopt"]  # "onnx" (the default) is what every other test compiles for
TARGET_LEVELS = [2, 3]


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("level", TARGET_LEVELS, ids=lambda lv: f"O{lv}")
@pytest.mark.parametrize("name", MODELS)
def test_golden_model_target(name, level, target):
    """Fused outputs for ONNX Runtime (contrib ops, run in ORT) and for graphopt's runtime reproduce
    the golden outputs ORT computed on the original."""
    g = golden.load_golden(name)
    compiled = _compile_and_check(golden.model_path(name), level, g.inputs, g.outputs, target)
    domains = {n.domain for n in compiled.graph.node}
    assert domains <= {"", "ai.onnx", "com.microsoft", "ai.graphopt"} | {f.domain for f in compiled.functions}
    if target == "ort":
        assert "ai.graphopt" not in domains, "an ai.graphopt op reached the ort target"


def test_custom_domain_model_has_custom_ops():
    """The custom_domain golden model really exercises what test_golden_model checks."""
    model = onnx.load_model(str(golden.model_path("custom_domain")))
    assert model.functions and _custom_nodes(model)


def test_external_data_model_uses_external_data():
    model = onnx.load_model(str(golden.model_path("external_data")), load_external_data=False)
    external = [t for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    assert external
    for t in external:
        location = {e.key: e.value for e in t.external_data}["location"]
        assert location == "model.onnx.data"


def _input_types(model: onnx.ModelProto) -> dict:
    return {i.name: (i.type.tensor_type.elem_type,
                     [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim])
            for i in model.graph.input if i.name in _real_inputs(model)}


def _symbolic_models() -> list[str]:
    return [n for n in MODELS if any(isinstance(d, str) for _, dims in _input_types(
        onnx.load_model(str(golden.model_path(n)), load_external_data=False)).values() for d in dims)]


@pytest.mark.parametrize("size", [1, 7])
@pytest.mark.parametrize("name", _symbolic_models())
def test_symbolic_dims_stay_symbolic(name, size):
    """Folding must not pin a symbolic dim to the golden inputs' value: the compiled model keeps its
    input signature and matches ONNX Runtime on the original at other sizes (1 included)."""
    path = golden.model_path(name)
    original = onnx.load_model(str(path))
    compiled = graphopt.compile_model(path, level=3).model
    assert _input_types(compiled) == _input_types(original)
    symbols = {d for _, dims in _input_types(original).values() for d in dims if isinstance(d, str)}
    feed = random_feed(original, seed=1, dims={s: size for s in symbols})
    assert not golden.compare(golden.reference_outputs(path, feed), _run_ort(compiled, feed))


def test_cli_compile_external_data_round_trip(tmp_path):
    """graphopt compile on a model with external data: the input files stay as they were, the written
    model loads from its own folder and reproduces the golden outputs."""
    from graphopt.cli.main import main
    files = golden.model_files("external_data")
    before = golden.fingerprint(files)
    out = tmp_path / "opt.onnx"
    assert main(["compile", str(golden.model_path("external_data")), "-o", str(out), "-O", "2", "-q",
                 "--external-data", "always"]) == 0
    assert golden.fingerprint(files) == before
    onnx.checker.check_model(str(out), full_check=True)
    g = golden.load_golden("external_data")
    assert not golden.compare(g.outputs, golden.reference_outputs(out, g.inputs))


# ---------------------------------------------------------------- the onnx package's light zoo

@functools.lru_cache(maxsize=None)
def _zoo_reference(path: Path):
    model = onnx.load_model(str(path))
    feed = random_feed(model, seed=0)
    return feed, golden.reference_outputs(model, feed)


@pytest.mark.parametrize("level", ZOO_LEVELS, ids=lambda lv: f"O{lv}")
@pytest.mark.parametrize("path", ZOO, ids=lambda p: p.stem)
def test_light_zoo(path, level):
    feed, expected = _zoo_reference(path)
    _compile_and_check(path, level, feed, expected)


# The light zoo's weights are ConstantOfShape(0.02): every channel computes the same thing and the
# softmax is uniform, so a fusion that mixes up channels would still match. The same networks with
# seeded random weights (materialized as initializers) and their logits exposed catch that.

RANDOM_WEIGHTS_MAX_PARAMS = 30_000_000  # leaves out alexnet, vgg19, zfnet512 (their FC layers are huge)
_ROLE_THROUGH = {"Unsqueeze", "Reshape", "Transpose", "Squeeze", "Identity"}


def _constant_params(path: Path) -> int:
    model = onnx.load_model(str(path))
    shapes = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    return sum(int(np.prod(shapes[n.input[0]])) for n in model.graph.node
               if n.op_type == "ConstantOfShape" and n.input and n.input[0] in shapes)


ZOO_RANDOM = [p for p in ZOO if 0 < _constant_params(p) <= RANDOM_WEIGHTS_MAX_PARAMS]


def _randomize_weights(model: onnx.ModelProto, seed: int = 0) -> onnx.ModelProto:
    """Replace every float ConstantOfShape(const shape) with a seeded random initializer scaled for its
    role (He-normal conv/FC weights, BN scale ~1 and variance in [0.5, 1.5], small biases/means), and
    expose the logits (the last Softmax's input), scaled by a power of two to O(1) so float rounding
    stays within the fp32 tolerance."""
    rng = np.random.default_rng(seed)
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    users: dict[str, list] = {}
    for n in g.node:
        for i, name in enumerate(n.input):
            users.setdefault(name, []).append((n, i))

    def role(name):  # the (node, input index) the value finally feeds, through reshapes
        while len(users.get(name, [])) == 1:
            n, i = users[name][0]
            if n.op_type not in _ROLE_THROUGH or i != 0:
                return n, i
            name = n.output[0]
        return None, None

    kept, made = [], []
    for n in g.node:
        value = numpy_helper.to_array(n.attribute[0].t) if n.op_type == "ConstantOfShape" and n.attribute else None
        if value is None or value.dtype != np.float32 or n.input[0] not in inits:
            kept.append(n)
            continue
        shape = tuple(int(d) for d in numpy_helper.to_array(inits[n.input[0]]))
        user, idx = role(n.output[0])
        key = (user.op_type if user is not None else None, idx)
        noise = rng.standard_normal(shape).astype(np.float32)
        if key in (("Conv", 1), ("Gemm", 1)):
            trans_b = any(a.name == "transB" and a.i for a in user.attribute)
            fan_in = int(np.prod(shape[1:])) if key[0] == "Conv" or trans_b else shape[0]
            arr = noise * np.float32(np.sqrt(2.0 / fan_in))
        elif key == ("BatchNormalization", 1):
            arr = 1 + 0.1 * noise
            if any(u.op_type in ("Sum", "Add") for u, _ in users.get(user.output[0], [])):
                arr *= np.float32(0.3)  # residual branches start small, so deep ResNets stay O(1)
        elif key == ("BatchNormalization", 4):
            arr = rng.uniform(0.5, 1.5, shape).astype(np.float32)
        elif key[0] == "Mul":
            arr = 1 + 0.1 * noise
        else:
            arr = 0.1 * noise
        made.append(numpy_helper.from_array(arr.astype(np.float32), n.output[0]))
    del g.node[:]
    g.node.extend(kept)
    g.initializer.extend(made)
    if model.ir_version < 4:  # IR 3: every initializer is also a graph input
        g.input.extend(onnx.helper.make_tensor_value_info(t.name, t.data_type, t.dims) for t in made)
    softmax = [n for n in g.node if n.op_type == "Softmax"]
    if softmax:
        logits = softmax[-1].input[0]
        feed = random_feed(model, seed=0)
        probe = onnx.ModelProto()
        probe.CopyFrom(model)
        probe.graph.output.append(onnx.helper.make_tensor_value_info(logits, onnx.TensorProto.FLOAT, None))
        raw = golden.reference_outputs(probe, feed)[logits]
        scale = np.float32(2.0 ** -np.round(np.log2(max(float(raw.std()), 1e-30))))
        g.initializer.append(numpy_helper.from_array(scale, "logits_scale__"))
        if model.ir_version < 4:
            g.input.append(onnx.helper.make_tensor_value_info("logits_scale__", onnx.TensorProto.FLOAT, []))
        at = next(i for i, n in enumerate(g.node) if n is softmax[-1])
        g.node.insert(at, onnx.helper.make_node("Mul", [logits, "logits_scale__"], ["logits__"], name="logits_scale__"))
        g.node[at + 1].input[0] = "logits__"
        g.output.append(onnx.helper.make_tensor_value_info("logits__", onnx.TensorProto.FLOAT, raw.shape))
    onnx.checker.check_model(model)
    return model


@pytest.fixture(scope="session")
def randomized_zoo(tmp_path_factory):
    """path -> (randomized model file, feed, reference outputs), built once per test process."""
    cache = {}

    def get(path: Path):
        if path not in cache:
            model = _randomize_weights(onnx.load_model(str(path)))
            out = tmp_path_factory.mktemp("zoo_random") / path.name
            onnx.save_model(model, str(out))
            feed = random_feed(model, seed=0)
            cache[path] = out, feed, golden.reference_outputs(out, feed)
        return cache[path]
    return get


@pytest.mark.parametrize("level", ZOO_LEVELS, ids=lambda lv: f"O{lv}")
@pytest.mark.parametrize("path", ZOO_RANDOM, ids=lambda p: p.stem)
def test_light_zoo_random_weights(path, level, randomized_zoo):
    model_file, feed, expected = randomized_zoo(path)
    assert all(np.isfinite(v).all() and np.std(v) > 1e-3 for v in expected.values())  # a meaningful model
    _compile_and_check(model_file, level, feed, expected)


@pytest.mark.parametrize("path", ZOO_RANDOM, ids=lambda p: p.stem)
def test_light_zoo_random_weights_target_ort(path, randomized_zoo):
    """--target ort at O2 on the randomized zoo (random weights catch channel mix-ups in fused ops;
    graphopt's NumPy runtime on these CNNs would cost minutes, so the graphopt target runs on models/)."""
    model_file, feed, expected = randomized_zoo(path)
    _compile_and_check(model_file, 2, feed, expected, "ort")
