"""python -m bench.fuzz --workers N: the same summary as the single-process fuzzer."""
from graphopt.distributed import PoolExecutor

from bench import fuzz
from bench.fuzz_parallel import run_parallel


def test_parallel_fuzzing_gives_the_single_process_summary():
    want = fuzz.run(8, 20240, save=None, max_ops=6, log=lambda m: None)
    with PoolExecutor(2) as pool:
        got = run_parallel(8, 20240, save=None, max_ops=6, log=lambda m: None, executor=pool, chunk=3)
    want.pop("seconds"), got.pop("seconds")
    assert got == want and got["graphs"] >= 6


def test_a_bad_worker_count_is_one_line(capsys):
    assert fuzz.main(["--n", "2", "--workers", "0"]) == 2
    assert capsys.readouterr().err == "fuzz: error: --workers must be >= 1, got 0\n"
