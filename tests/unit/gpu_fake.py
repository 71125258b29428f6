"""A NumPy stand-in for CuPy plus Python versions of the CUDA kernels, so the GPU runtime's host
side (the plan, host/device split, shape cache, fusion plumbing, the op wrappers' geometry and
argument order) runs on a machine without CuPy or a GPU. Used by test_gpu_emulated.py in a
subprocess (it installs fake `cupy`/`cupyx` modules). The kernels here re-state the CUDA sources'
index math; they are test doubles: nothing here checks the CUDA code itself (test_gpu_sources.py
compiles it, tests/gpu runs it).

    python tests/unit/gpu_fake.py     # prints one line per case: ok/FAIL/ERR, then a summary
"""
from __future__ import annotations

import math
import sys
import types
from pathlib import Path

import numpy as np


def install():
    """Put fake cupy / cupyx modules in sys.modules (NumPy underneath)."""
    cp = types.ModuleType("cupy")
    cp.__getattr__ = lambda name: getattr(np, name)  # PEP 562: everything else is NumPy's
    cp.ndarray, cp.asnumpy, cp.__version__ = np.ndarray, np.asarray, "fake"
    cuda = types.ModuleType("cupy.cuda")
    runtime = types.ModuleType("cupy.cuda.runtime")
    runtime.getDeviceCount = lambda: 1
    cuda.runtime = runtime
    cp.cuda = cuda
    core = types.ModuleType("cupy._core")
    linalg = types.ModuleType("cupy._core._routines_linalg")
    linalg.get_compute_type = lambda dt: 1
    linalg.set_compute_type = lambda dt, ct: None
    linalg.COMPUTE_TYPE_TF32, linalg.COMPUTE_TYPE_FP32 = 7, 4
    core._routines_linalg = linalg
    cp._core = core
    cupyx = types.ModuleType("cupyx")
    scipy = types.ModuleType("cupyx.scipy")
    special = types.ModuleType("cupyx.scipy.special")
    special.erf = lambda x: np.vectorize(math.erf, otypes=[np.float64])(x).astype(np.result_type(x, np.float32))
    cupyx.scipy, scipy.special = scipy, special
    sys.modules.update({"cupy": cp, "cupy.cuda": cuda, "cupy.cuda.runtime": runtime, "cupy._core": core,
                        "cupy._core._routines_linalg": linalg, "cupyx": cupyx, "cupyx.scipy": scipy,
                        "cupyx.scipy.special": special})
    from graphopt.kernels.gpu import cupy_runtime as rt
    from graphopt.kernels.gpu import codegen
    rt.function = _function
    rt.launch = lambda fn, n, args, block=256: fn((1,), (block,), args) if n > 0 else None

    def fused_function(chain):  # the fused kernel's IR, evaluated by its NumPy rendering
        f = codegen.numpy_function(chain.program, chain.dtype)
        n_in = chain.program.n_inputs

        def call(grid, block, args):
            y = args[n_in]
            y[...] = np.broadcast_to(f(*args[:n_in])[0], y.shape)
        return call
    rt.fused_function = fused_function


# --- the CUDA kernels, restated (same argument order as the extern "C" entry points) ----------
def gs(args):
    """Kernel arguments as the CUDA code sees them: arrays flat, scalars as Python numbers."""
    return [a.reshape(-1) if isinstance(a, np.ndarray) else (a.item() if hasattr(a, "item") else a) for a in args]



def k_transpose2d(grid, block, args):
    x, y, R, C = gs(args); B = grid[2]
    xv = x.reshape(B, R, C); y[:] = xv.transpose(0, 2, 1).reshape(-1)


def k_permute(grid, block, args):
    x, y, total, rank, p = gs(args)
    for i in range(total):
        r, off = i, 0
        for a in range(rank - 1, -1, -1):
            off += (r % p[a]) * p[rank + a]; r //= p[a]
        y[i] = x[off]


def k_gather(grid, block, args):
    x, ind, y, total, n, m, inner, bad = gs(args)
    for i in range(total):
        in_, j, o = i % inner, (i // inner) % m, i // (inner * m)
        k = ind[j]; k = k + n if k < 0 else k
        y[i] = x[(o * n + k) * inner + in_]


def k_pool(grid, block, args):
    x, y, total, id_, ih, iw, od, oh, ow, kd, kh, kw, sd, sh, sw, pd, ph, pw, ped, peh, pew, dd, dh, dw, mode = gs(args)
    for i in range(total):
        r = i; ox = r % ow; r //= ow; oy = r % oh; r //= oh; oz = r % od; r //= od
        base = r * id_ * ih * iw; best = -np.inf; s = 0.0; valid = padded = 0
        for a in range(kd):
            z = oz * sd - pd + a * dd
            for b in range(kh):
                yy = oy * sh - ph + b * dh
                for c in range(kw):
                    xx = ox * sw - pw + c * dw
                    if -pd <= z < id_ + ped and -ph <= yy < ih + peh and -pw <= xx < iw + pew: padded += 1
                    if z < 0 or z >= id_ or yy < 0 or yy >= ih or xx < 0 or xx >= iw: continue
                    v = float(x[(z * ih + yy) * iw + xx + base]); best = max(best, v); s += v; valid += 1
        y[i] = best if mode == 0 else s / (padded if mode == 1 else max(valid, 1))


def k_im2col(grid, block, args):
    x, col, total, C, H, W, kh, kw, oh, ow, sh, sw, ph, pw, dh, dw = gs(args)
    for i in range(total):
        r = i; ox = r % ow; r //= ow; oy = r % oh; r //= oh; kx = r % kw; r //= kw; ky = r % kh; r //= kh
        c = r % C; n = r // C
        yy = oy * sh - ph + ky * dh; xx = ox * sw - pw + kx * dw
        col[i] = x[((n * C + c) * H + yy) * W + xx] if 0 <= yy < H and 0 <= xx < W else 0


def k_depthwise(grid, block, args):
    x, w, bias, y, total, C, Co, H, W, kh, kw, oh, ow, sh, sw, ph, pw, dh, dw = gs(args)
    mult = Co // C
    for i in range(total):
        r = i; ox = r % ow; r //= ow; oy = r % oh; r //= oh; co = r % Co; n = r // Co
        acc = float(bias[co]) if isinstance(bias, np.ndarray) else 0.0
        for ky in range(kh):
            yy = oy * sh - ph + ky * dh
            if yy < 0 or yy >= H: continue
            for kx in range(kw):
                xx = ox * sw - pw + kx * dw
                if xx < 0 or xx >= W: continue
                acc += float(x[((n * C + co // mult) * H + yy) * W + xx]) * float(w[co * kh * kw + ky * kw + kx])
        y[i] = acc


def k_resize(grid, block, args):
    x, y, idx, w, taps, total, n_in, n_out, inner = gs(args)
    for i in range(total):
        in_, j, o = i % inner, (i // inner) % n_out, i // (inner * n_out)
        y[i] = sum(w[j * taps + t] * x[o * n_in * inner + in_ + idx[j * taps + t] * inner] for t in range(taps))


def k_softmax(grid, block, args):
    x, y, n, inner, log_mode = gs(args)
    v = x.reshape(-1, n, inner).astype(np.float64); m = v.max(1, keepdims=True); e = np.exp(v - m); s = e.sum(1, keepdims=True)
    y[:] = ((v - m - np.log(s)) if log_mode else e / s).reshape(-1)


def k_norm(grid, block, args):
    x, scale, bias, y, mean_out, rstd_out, n, eps, rms = gs(args)
    v = x.reshape(-1, n).astype(np.float64)
    mu = np.zeros((v.shape[0], 1)) if rms else v.mean(1, keepdims=True)
    r = 1 / np.sqrt(((v - mu) ** 2).mean(1, keepdims=True) + eps)
    out = (v - mu) * r * scale
    if isinstance(bias, np.ndarray): out = out + bias
    y[:] = out.reshape(-1); mean_out[:] = mu.reshape(-1); rstd_out[:] = r.reshape(-1)


def k_attention(grid, block, args):
    q, k, v, out, mask, mk, msb, msh, msq, msk, H, KVH, Sq, Sk, d, scale, causal, past = gs(args)
    B = grid[1] // H
    qq = q.reshape(B, H, Sq, d).astype(np.float64); kk = k.reshape(B, KVH, Sk, d); vv = v.reshape(B, KVH, Sk, d)
    kk = np.repeat(kk, H // KVH, 1); vv = np.repeat(vv, H // KVH, 1)
    s = qq @ kk.transpose(0, 1, 3, 2) * scale
    for b in range(B):
        for h in range(H):
            for i in range(Sq):
                for j in range(Sk):
                    keep = not (causal and j > i + past)
                    off = b * msb + h * msh + i * msq + j * msk
                    if keep and mk == 2: keep = mask[off] != 0
                    if not keep: s[b, h, i, j] = -np.inf
                    elif mk == 1: s[b, h, i, j] += mask[off]
    m = s.max(-1, keepdims=True); e = np.exp(s - np.where(np.isfinite(m), m, 0)); t = e.sum(-1, keepdims=True)
    p = np.where(t > 0, e / np.where(t > 0, t, 1), 0)
    out[:] = (p @ vv).reshape(-1)


def k_gelu(grid, block, args):
    x, y, n, approx = gs(args)
    y[:] = [0.5 * v * (1 + (math.tanh(0.7978845608028654 * (v + 0.044715 * v ** 3)) if approx else math.erf(v / math.sqrt(2)))) for v in x]


def k_quant(grid, block, args):
    x, scale, zp, y, total, ch, inner, lo, hi = gs(args)
    for i in range(total):
        c = (i // inner) % ch
        qv = np.rint(np.float32(x[i]) / np.float32(scale[c])) + (float(zp[c]) if isinstance(zp, np.ndarray) else 0)
        y[i] = min(max(qv, lo), hi)


def k_dequant(grid, block, args):
    qq, scale, zp, y, total, ch, inner = gs(args)
    for i in range(total):
        c = (i // inner) % ch
        y[i] = (float(qq[i]) - (float(zp[c]) if isinstance(zp, np.ndarray) else 0)) * scale[c]


def k_scatter_nd(grid, block, args):
    y, ind, upd, dims, strides, K, u, sl, bad = gs(args)
    for i in range(u * sl):
        row = i // sl; off = 0
        for c in range(K):
            v = ind[row * K + c]; v = v + dims[c] if v < 0 else v; off += v * strides[c]
        y[off + i % sl] = upd[i]


def k_scatter_el(grid, block, args):
    y, ind, upd, udims, ystr, rank, axis, alen, total, red, bad = gs(args)
    for i in range(total):
        r, off = i, 0
        for a in range(rank - 1, -1, -1):
            c = r % udims[a]; r //= udims[a]
            if a == axis:
                c = ind[i]; c = c + alen if c < 0 else c
            off += c * ystr[a]
        if red == 1: y[off] += upd[i]
        else: y[off] = upd[i]

_TABLE = {"go_transpose2d": k_transpose2d, "go_permute": k_permute, "go_gather": k_gather, "go_pool": k_pool,
          "go_im2col": k_im2col, "go_depthwise": k_depthwise, "go_resize_axis": k_resize, "go_softmax": k_softmax,
          "go_norm": k_norm, "go_attention": k_attention, "go_gelu": k_gelu, "go_quantize": k_quant,
          "go_dequantize": k_dequant, "go_scatter_nd": k_scatter_nd, "go_scatter_elements": k_scatter_el}


def _function(source, name):
    base = next(k for k in sorted(_TABLE, key=len, reverse=True) if name.startswith(k))
    return _TABLE[base]


# --- the driver ----------------------------------------------------------------------------------
def main() -> int:
    install()
    import cupy
    assert cupy.__version__ == "fake"
    print("fake cupy in use")
    root = Path(__file__).resolve().parents[2]
    sys.path.insert(0, str(root / "tests" / "gpu"))
    import onnx
    import onnxruntime as ort

    import graphopt
    from graphopt import golden
    import test_gpu_kernels as cases  # the GPU tests' own cases and inputs

    def reference(model, feed):
        return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)

    def check(label, model, feed, rtol=1e-4, atol=1e-5, **opts):
        try:
            sess = graphopt.Session(model, device="gpu", **opts)
            for _ in range(2):  # the second run reads the per-shape host cache
                got = sess.run(None, feed)
            want = reference(model, feed)
            bad = [i for i, (w, g) in enumerate(zip(want, got)) if g.shape != w.shape or not np.allclose(
                g.astype(np.float64), w.astype(np.float64), rtol=rtol, atol=atol)]
            print(("FAIL " if bad else "ok   ") + label + (f" outputs {bad}" if bad else ""))
            return not bad
        except Exception as e:  # noqa: BLE001  (reported per case)
            print(f"ERR  {label}: {type(e).__name__}: {e}")
            return False

    results = []
    for name in sorted(cases.CASES):
        build, tol = cases.CASES[name]
        model = build()
        ins = [(vi.name, vi.type.tensor_type.elem_type, [d.dim_value for d in vi.type.tensor_type.shape.dim])
               for vi in model.graph.input]
        results.append(check(name, model, cases._feed(ins, 1), **tol))
    for p in [(2, 4, 4, 7, 9, 64, None, 0), (1, 4, 2, 5, 13, 32, cases.F, 0), (2, 2, 2, 5, 5, 128, cases.B, 0),
              (1, 3, 3, 10, 10, 64, None, 1), (1, 2, 1, 6, 9, 160, cases.F, 1)]:
        model, ins = cases._attention_model(*p)
        feed = cases._feed(ins, 8)
        if p[6] == cases.B:
            feed["m"][..., 0] = True
        results.append(check(f"attention {p}", model, feed, 1e-3, 1e-4))
    for mode, ctm in [("nearest", "asymmetric"), ("linear", "half_pixel"), ("cubic", "align_corners")]:
        model = cases._model("Resize", [("x", cases.F, [1, 2, 5, 6])], mode=mode, coordinate_transformation_mode=ctm,
                             consts={"roi": np.zeros(0, np.float32), "scales": np.array([1, 1, 2.0, 1.5], np.float32)})
        results.append(check(f"resize {mode} {ctm}", model, cases._feed([("x", cases.F, [1, 2, 5, 6])], 3)))
    for name in ("transformer_block", "convnet", "shape_chain", "if_subgraph"):
        g = golden.load_golden(name)
        model = onnx.load(str(golden.model_path(name)))
        for prec, tol in (("fp32", {}), ("fp16", {"rtol": 3e-2, "atol": 3e-2})):
            sess = graphopt.Session(model, device="gpu", precision=prec, gpu_fallback=name == "if_subgraph")
            got = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, g.inputs)))
            problems = golden.compare(g.outputs, got, **tol)
            print(("FAIL " if problems else "ok   ") + f"golden {name} {prec} {problems[:1]}")
            results.append(not problems)
    for name in ("transformer_block", "convnet", "bert_encoder", "mobilenet_yolo"):  # graphopt's fused ops (ai.graphopt)
        g = golden.load_golden(name)
        model = graphopt.compile_model(golden.model_path(name), level=2, target="graphopt").model
        sess = graphopt.Session(model, device="gpu")
        got = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, g.inputs)))
        problems = golden.compare(g.outputs, got)
        fused = sorted({n.op_type for n in model.graph.node if n.domain == "ai.graphopt"})
        print(("FAIL " if problems else "ok   ") + f"golden {name} --target graphopt {fused} {problems[:1]}")
        results.append(not problems)
    prenorm = cases._prenorm_residual_model()  # skip-LayerNorm that also writes the residual sum
    feed = cases._feed([("a", cases.F, [2, 5, 16]), ("b", cases.F, [2, 5, 16])], 4)
    try:
        got = graphopt.Session(graphopt.compile(prenorm, level=2, target="graphopt"), device="gpu").run(None, feed)
        ok = np.allclose(got[0], reference(prenorm, feed)[0], rtol=1e-4, atol=1e-5)
        print(("ok   " if ok else "FAIL ") + "skip-layernorm with sum output --target graphopt")
    except Exception as e:  # noqa: BLE001  (reported per case)
        print(f"ERR  skip-layernorm with sum output: {type(e).__name__}: {e}")
        ok = False
    results.append(ok)
    print(f"{sum(results)}/{len(results)} passed")
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
