"""What `compile --target graphopt` takes into its fused ops, run by the GPU runtime's host code with
gpu_fake.py's NumPy stand-in for CuPy, against ONNX Runtime on the original: SkipLayerNormalization
with the residual branch's bias (5th input; constant and fed, with and without the sum output) and
Q/K/V packed into one MatMul + Split. Used by test_gpu_emulated.py in a subprocess.

    python tests/unit/gpu_fake_lowering.py     # one line per case: ok/FAIL/ERR, then a summary
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def main() -> int:
    sys.path.insert(0, str(HERE))
    import gpu_fake
    gpu_fake.install()  # before graphopt's GPU kernels are imported
    import cupy
    assert cupy.__version__ == "fake"
    print("fake cupy in use")
    import onnx.parser
    import test_graphopt_lowering as cases

    import graphopt
    from graphopt.verify import random_feed, run_ort

    def check(label, original, compiled, feed, want_inputs=None):
        try:
            if want_inputs is not None:
                skip = next(n for n in compiled.graph.node if n.op_type == "SkipLayerNormalization")
                assert len(skip.input) == want_inputs, list(skip.input)
            sess = graphopt.Session(compiled, device="gpu")
            want = run_ort(original, feed)
            for _ in range(2):  # the second run reads the per-shape host cache
                got = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feed)))
                bad = [k for k in want if not np.allclose(got[k], want[k], rtol=1e-4, atol=1e-5)]
                assert not bad, f"outputs {bad} differ"
            print(f"ok   {label}")
            return True
        except Exception as e:  # noqa: BLE001  (reported per case)
            print(f"ERR  {label}: {type(e).__name__}: {e}")
            return False

    def compiled(text):
        model = onnx.parser.parse_model(text)
        return model, graphopt.compile(model, level=2, target="graphopt")

    results = []
    for label, text in (("skip-LN takes the bias", cases.residual()),
                        ("skip-LN takes the bias, sum read by the next Add",
                         cases.residual(extra_out=", float[N,3,8] z", reader="z = Add(s, y)"))):
        model, out = compiled(text)
        results.append(check(label + " --target graphopt", model, out, random_feed(model, 0, {"N": 3}), 5))
    feed = {"x": cases.X, "r": cases.RES, "bias": cases.BIAS}
    for with_sum in (False, True):  # the bias fed at run time: the kernel's generic path
        mine, ref = (cases._skip_model(d, with_sum, bias_const=False) for d in ("ai.graphopt", "com.microsoft"))
        results.append(check(f"ai.graphopt skip-LN, fed bias, sum output {with_sum}", ref, mine, feed))
    model, out = compiled(cases.attention_model())
    assert "Split" in [n.op_type for n in out.graph.node]
    results.append(check("Q/K/V packed into MatMul + Split --target graphopt", model, out,
                         random_feed(model, 1, {"N": 2})))
    print(f"{sum(results)}/{len(results)} passed")
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
