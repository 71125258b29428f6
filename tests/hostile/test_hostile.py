"""Every hostile model is refused with the right error class: by the API, by the CLI (exit 1, one
line, no output file) and, where loading can tell, by graphopt.Session; within 10 s and 1 GiB,
writing nothing outside the test's temp folder."""
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

import graphopt
from graphopt import cli
from graphopt.errors import GraphoptError

sys.path.insert(0, str(Path(__file__).parent))
from build_corpus import build  # noqa: E402

HERE = Path(__file__).parent
with tempfile.TemporaryDirectory() as _scratch:  # names for parametrize; each test builds its own copy
    NAMES = [c.name for c in build(Path(_scratch))]
# graphopt.Session (graphopt/runtime/session.py, not owned here) loads with onnx.load and checks less than
# graphopt.ir.load_model: these are accepted or crash there today. Fix: call ir.load_model on load.


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    return root, {c.name: c for c in build(root)}


def _files(folder: Path) -> set:
    return {p.relative_to(folder) for p in folder.rglob("*")}


def test_corpus_has_every_category():
    assert len(NAMES) >= 25
    for needed in ("not_protobuf", "truncated_protobuf", "cycle", "duplicate_output", "undefined_input",
                   "raw_data_size_mismatch", "unknown_dtype_initializer", "negative_dim_input", "rank_100",
                   "constantofshape_1e12", "expand_1e12", "tile_1e12", "range_1e12", "resize_huge_scales",
                   "nested_if_over_max_depth", "recursive_function", "external_path_traversal",
                   "external_symlink_escape", "too_many_nodes", "time_limit"):
        assert needed in NAMES


@pytest.mark.parametrize("name", NAMES)
def test_api_refuses(corpus, name):
    root, cases = corpus
    case = cases[name]
    before = _files(root)
    with pytest.raises(case.error) as info:
        graphopt.compile_model(case.path, level=2, limits=case.limits)
    assert type(info.value) is case.error, f"{type(info.value).__name__}: {info.value}"
    assert str(info.value)
    assert _files(root) == before


@pytest.mark.parametrize("name", NAMES)
def test_cli_refuses_with_one_line(corpus, name, capsys):
    root, cases = corpus
    case = cases[name]
    out = case.path.parent / "out.onnx"
    before = _files(root)
    code = cli.main(["compile", str(case.path), "-o", str(out), *case.cli_args])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert len(err) == 1 and err[0].startswith("graphopt: error: "), err
    assert not out.exists()
    assert _files(root) == before


@pytest.mark.parametrize("name", NAMES)
def test_session_refuses(corpus, name):
    root, cases = corpus
    case = cases[name]
    if not case.session:
        pytest.skip("only compile can tell (limit options, shape inference or wall time)")
    with pytest.raises(GraphoptError):
        graphopt.Session(case.path)


def test_whole_corpus_in_a_subprocess_within_time_and_memory(tmp_path):
    """The CLI path over every case in one child process: each under 10 s, the child under 1 GiB
    peak RSS, nothing written outside tmp_path. The peak is the child's own VmHWM, read at its end:
    wait4's ru_maxrss would also count the parent's resident set, which Linux carries into a child
    started by vfork+exec (a pytest worker that has run the model tests holds GBs)."""
    script = (
        "import json, sys, time, contextlib, io\n"
        f"sys.path.insert(0, {str(HERE)!r})\n"
        "from build_corpus import build\n"
        "from graphopt import cli\n"
        "from pathlib import Path\n"
        "res = {}\n"
        "for c in build(Path(sys.argv[1])):\n"
        "    err = io.StringIO(); t = time.perf_counter()\n"
        "    with contextlib.redirect_stderr(err):\n"
        "        code = cli.main(['compile', str(c.path), '-o', str(c.path.parent / 'out.onnx'), *c.cli_args])\n"
        "    res[c.name] = [code, time.perf_counter() - t, len(err.getvalue().strip().splitlines())]\n"
        "import os\n"
        "status = open('/proc/self/status').read().splitlines() if os.path.exists('/proc/self/status') else []\n"
        "hwm = [ln for ln in status if ln.startswith('VmHWM:')]\n"
        "print(json.dumps({'cases': res, 'peak_kib': int(hwm[0].split()[1]) if hwm else None}))\n")
    proc = subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "corpus")], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=tmp_path)
    _, status, usage = os.wait4(proc.pid, 0)
    out, err = proc.stdout.read(), proc.stderr.read()
    assert os.waitstatus_to_exitcode(status) == 0, err.decode()[-2000:]
    report = json.loads(out)
    results = report["cases"]
    peak_kib = report["peak_kib"] or usage.ru_maxrss  # no /proc (not Linux): the kernel's figure
    assert sorted(results) == sorted(NAMES)
    for name, (code, seconds, lines) in results.items():
        assert (code, lines) == (1, 1), name
        assert seconds < 10, f"{name} took {seconds:.1f} s"
    assert peak_kib * 1024 < 1 << 30, f"peak RSS {peak_kib / 1024:.0f} MiB"
    assert not list((tmp_path / "corpus").rglob("out.onnx*"))
    assert not [p for p in tmp_path.iterdir() if p.name != "corpus"]  # the child's working folder stays empty
