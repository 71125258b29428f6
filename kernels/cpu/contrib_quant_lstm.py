"""ONNX Runtime's com.microsoft DynamicQuantizeLSTM: what `onnxruntime.quantization.quantize_dynamic`
makes of an LSTM.

W (dirs, input, 4H) and R (dirs, H, 4H) are 8-bit with a scale and zero point per direction or per
column. ORT runs it as its LSTM with integer GEMMs whose float operand is quantized on the fly: X
once for all steps, h_{t-1} at every step, each to uint8 over its own range (min and max widened to
include 0, scale = (max - min) / 255, zero point = round(-min / scale), round half to even). The
integer products are exact here (float64 sums of integers), scaled by a_scale * w_scale in float32,
as ORT does. Then the gates as in the float LSTM (rnn.lstm_steps: i, o, f, c). The
forms the float LSTM's prepared kernel leaves out (peepholes, clip, other activations, coupled
input-forget) are refused when the Session is built; ragged sequence_lens fail at run time.
"""
from __future__ import annotations

import numpy as np

from ..registry import DYNAMIC, kernel, prepare
from .rnn import reverse_time, rnn_runner, lstm_steps
from .quant import dynamic_uint8

DOMAIN = "com.microsoft"


def _quantized_gemm(a, w_centered, w_scale):
    """a (M, K) float32 @ 8-bit weights (K, N, zero point already subtracted), the way ORT's
    quantized LSTM GEMM computes it: a quantized to uint8 over its own range, exact integer sums,
    int32 -> float32 as in MLAS, times a_scale * w_scale."""
    qa, a_scale, a_zp = dynamic_uint8(a)
    acc = ((qa.astype(np.float64) - a_zp) @ w_centered).astype(np.float32)
    return acc * (a_scale * w_scale)


def _build(ins, at):
    """The kernel for these weights (inputs 1-3 and 8-11): zero points subtracted and both biases
    summed once; X and h quantized per call and per step."""
    w, r = ins[1], ins[2]
    b = ins[3] if len(ins) > 3 and ins[3] is not None else None
    w_scale, w_zp, r_scale, r_zp = ins[8], ins[9], ins[10], ins[11]
    dirs, hidden = w.shape[0], r.shape[1]

    def direction(d):
        wc = w[d].astype(np.float64) - w_zp[d].astype(np.float64)  # (input, 4H), zero point per column or one
        rc = r[d].astype(np.float64) - r_zp[d].astype(np.float64)
        ws, rs = w_scale[d].astype(np.float32), r_scale[d].astype(np.float32)
        bias = (b[d, :4 * hidden] + b[d, 4 * hidden:]).astype(np.float32) if b is not None else np.zeros(4 * hidden, np.float32)

        def run(x, states, out):
            seq, batch, _ = x.shape
            xw = _quantized_gemm(x.reshape(seq * batch, -1), wc, ws).reshape(seq, batch, -1)
            xw += bias
            return lstm_steps(xw, lambda h, gates: _quantized_gemm(h, rc, rs), *states, out, reverse_time(at, d))
        return run
    return rnn_runner(at, _ragged_lens, np.dtype(np.float32), hidden, dirs, [direction(d) for d in range(dirs)], 2)


@kernel("DynamicQuantizeLSTM", 1, domain=DOMAIN)
def dynamic_quantize_lstm(ins, at):
    return _build(ins, at)(ins, at)


@prepare("DynamicQuantizeLSTM", 1, domain=DOMAIN)
def prepare_dynamic_quantize_lstm(at, consts, generic):
    """Constant weights, scales and zero points (the usual case): the kernel built once at build."""
    if any(not isinstance(consts[i], np.ndarray) for i in (1, 2, 8, 9, 10, 11)) \
            or (len(consts) > 3 and consts[3] is DYNAMIC):
        return None
    return _build(consts, at)


def _ragged_lens(args, at):
    raise ValueError("sequence_lens shorter than the sequence are not supported by DynamicQuantizeLSTM here")


def _refuse(at, inputs, outputs):
    acts = [a.lower() for a in at.get("activations") or []]
    if (len(inputs) > 7 and inputs[7]) or at.get("clip") is not None or at.get("input_forget") \
            or acts not in ([], ["sigmoid", "tanh", "tanh"], ["sigmoid", "tanh", "tanh"] * 2):
        return "peepholes, clip, input_forget or other activations"
    return None


dynamic_quantize_lstm.refuse = _refuse
