"""The Ray executor on a real local Ray instance (started once for this file, 2 CPUs): the same results
as the local executors, retries, a failing task named, a killed worker survived, an unreachable
cluster a one-line error. Skipped when Ray is not installed."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

import executor_tasks as t  # noqa: E402
import quant_models as qm  # noqa: E402
from graphopt.cli.main import main  # noqa: E402
from graphopt.distributed import InProcessExecutor, Task, make_executor  # noqa: E402
from graphopt.distributed.ray_executor import RayUnreachable  # noqa: E402
from graphopt.fleet import compile_many, read_manifest  # noqa: E402

MODELS = Path(__file__).resolve().parents[2] / "models"


@pytest.fixture(scope="module")
def on_ray():
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="error")
    ray.cloudpickle.register_pickle_by_value(t)  # the test's task functions travel by value: workers
    ex = make_executor(ray="auto")                # do not have tests/unit on their path
    yield ex
    ex.close()
    ray.cloudpickle.unregister_pickle_by_value(t)
    if started:
        ray.shutdown()


def test_results_retries_and_a_named_failure(on_ray, tmp_path):
    tasks = [Task(f"model_{i}.onnx", t.square, (i,)) for i in range(5)]
    tasks[1] = Task("flaky", t.raise_once, (str(tmp_path / "m"), 1))
    tasks[3] = Task("model_3.onnx", t.always_raise, (3,))
    lines = []
    out = on_ray.map(tasks, retries=1, progress=lines.append, label="fleet")
    assert [o.value for o in out] == [0, 1, 4, None, 16] and out[1].attempts == 2
    assert out[3].error == "ValueError: model_3.onnx is broken" and out[3].attempts == 2
    assert lines[-1].startswith("fleet: 5/5 tasks (1 failed, 2 retried)")


def test_a_large_bytes_argument_is_stored_once_and_arrives_as_bytes(on_ray):
    blob = bytes(200_000)  # above BIG_ARG: goes through Ray's object store, shared by the tasks
    assert [o.value for o in on_ray.map([Task(f"t{i}", t.length, (blob, i)) for i in range(3)])] == [200_000, 200_001, 200_002]


def test_a_killed_ray_worker_is_survived(on_ray, tmp_path):
    out = on_ray.map([Task("dies once", t.die_once, (str(tmp_path / "m"), 4)), Task("fine", t.square, (2,))])
    assert [o.value for o in out] == [16, 4] and out[0].attempts == 2


def test_fleet_and_calibration_equal_the_in_process_results(on_ray, tmp_path):
    from graphopt.lossy.calib_shards import calibrate_sharded
    from graphopt.lossy.calibrate import calibrate
    from graphopt.passes.quantize import plan_static
    m = tmp_path / "fleet.json"
    m.write_text(json.dumps([{"model": str(MODELS / n / "model.onnx"), "name": n}
                             for n in ("convnet", "transformer_block", "shape_chain")]))
    for d in "ab":
        (tmp_path / d).mkdir()
    compile_many(read_manifest(m, tmp_path / "a"), InProcessExecutor())
    rows = compile_many(read_manifest(m, tmp_path / "b"), on_ray)
    assert [r.status for r in rows] == ["compiled"] * 3
    for f in (tmp_path / "a").glob("*.onnx"):
        assert f.read_bytes() == (tmp_path / "b" / f.name).read_bytes(), f.name
    model, calib = qm.cnn(), qm.feeds("x", (2, 3, 8, 8), 5, seed=1)
    tensors = plan_static(model).tensors
    assert calibrate_sharded(model, tensors, calib, "entropy", 99.99, on_ray) == calibrate(model, tensors, calib, "entropy")


def test_an_unreachable_cluster_is_a_one_line_error(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("GRAPHOPT_RAY_TIMEOUT", "2")
    with pytest.raises(RayUnreachable, match=r"Ray cluster at 127.0.0.1:1 is unreachable: .*waited up to 2 s"):
        make_executor(ray="127.0.0.1:1")
    m = tmp_path / "fleet.json"
    m.write_text(json.dumps([{"model": str(MODELS / "convnet/model.onnx")}]))
    monkeypatch.setenv("GRAPHOPT_RAY_ADDRESS", "127.0.0.1:1")
    assert main(["compile-many", str(m), "--out-dir", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Ray cluster at 127.0.0.1:1 is unreachable" in err
    assert not list((tmp_path / "out").iterdir())


def test_budget_search_on_ray_chooses_the_single_process_candidate(on_ray, monkeypatch):
    from graphopt import lossy
    from graphopt.lossy import budget
    monkeypatch.setattr(budget, "latency_ms", lambda m, feed, runs=10: m.ByteSize() / 1e4)  # timing aside
    model = qm.cnn()
    calib, evals = qm.feeds("x", (2, 3, 8, 8), 5, seed=1), qm.feeds("x", (2, 3, 8, 8), 4, seed=2)
    args = (model, "static", evals, 1e-9, "max-rel-error", True)  # best effort: the most accurate one
    one, one_report = lossy.with_budget(*args, calib=calib)
    many, many_report = lossy.with_budget(*args, calib=calib, executor=on_ray)
    assert many_report.table == one_report.table and many.SerializeToString() == one.SerializeToString()


def test_a_port_that_is_not_ray_times_out_instead_of_hanging(tmp_path):
    """Something listens but never speaks Ray: the driver gives up after GRAPHOPT_RAY_TIMEOUT seconds.
    In a fresh process (this one is already connected to the test's Ray); subprocess's own timeout
    would fail the test on a hang."""
    import os
    import socket
    import subprocess
    import sys
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(4)
        port = server.getsockname()[1]
        m = tmp_path / "fleet.json"
        m.write_text(json.dumps([{"model": str(MODELS / "convnet/model.onnx")}]))
        run = subprocess.run([sys.executable, "-m", "graphopt", "compile-many", str(m), "--out-dir", str(tmp_path / "o"),
                              "--ray", f"127.0.0.1:{port}"], capture_output=True, text=True, timeout=180,
                             env={**os.environ, "GRAPHOPT_RAY_TIMEOUT": "2"})
    assert run.returncode == 1, run.stderr
    assert run.stderr == (f"graphopt: error: Ray cluster at 127.0.0.1:{port} answered on the port but did not "
                          "accept a driver within 2 s\n")
