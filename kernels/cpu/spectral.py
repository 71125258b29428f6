"""Signal processing: DFT, STFT, MelWeightMatrix. Complex values travel as a trailing [re, im] axis."""
from __future__ import annotations

import numpy as np

from ..registry import kernel
from ._util import np_dtype


def _as_complex(x):
    return x[..., 0] if x.shape[-1] == 1 else x[..., 0] + 1j * x[..., 1]


def _pack(y, dtype):
    return np.stack([y.real, y.imag], axis=-1).astype(dtype)


def _dft(x, length, axis, inverse, onesided):
    # float32 signals are transformed in single precision, as other runtimes do
    sig = _as_complex(x if x.dtype in (np.float32, np.float64) else x.astype(np.float32))
    axis = axis % sig.ndim
    real_in = x.shape[-1] == 1
    if inverse and onesided:  # one-sided spectrum -> real signal
        n = length or 2 * (sig.shape[axis] - 1)
        return np.fft.irfft(sig, n=n, axis=axis)[..., None].astype(x.dtype)
    y = (np.fft.ifft if inverse else np.fft.fft)(sig, n=length, axis=axis)
    if onesided and real_in:
        n = y.shape[axis]
        y = np.take(y, np.arange(n // 2 + 1), axis=axis)
    return _pack(y, x.dtype)


@kernel("DFT", 17)
def dft_v17(ins, at):
    x = ins[0]
    length = int(np.asarray(ins[1]).reshape(-1)[0]) if len(ins) > 1 and ins[1] is not None else None
    return (_dft(x, length, at["axis"], at["inverse"], at["onesided"]),)


@kernel("DFT", 20)
def dft(ins, at):
    x = ins[0]
    length = int(np.asarray(ins[1]).reshape(-1)[0]) if len(ins) > 1 and ins[1] is not None else None
    axis = int(np.asarray(ins[2]).reshape(-1)[0]) if len(ins) > 2 and ins[2] is not None else -2
    # axis counts the signal dims; the trailing [re, im] axis is not one of them
    axis = axis if axis >= 0 else axis + x.ndim
    return (_dft(x, length, axis, at["inverse"], at["onesided"]),)


@kernel("STFT", 17)
def stft(ins, at):
    signal, step = ins[0], int(np.asarray(ins[1]).reshape(-1)[0])
    window = ins[2] if len(ins) > 2 and ins[2] is not None else None
    length = ins[3] if len(ins) > 3 and ins[3] is not None else None
    sig = _as_complex(signal.astype(np.float64))  # (batch, n)
    n = sig.shape[1]
    frame = int(np.asarray(length).reshape(-1)[0]) if length is not None else \
        (window.shape[0] if window is not None else n)
    frames = (n - frame) // step + 1
    idx = np.arange(frames)[:, None] * step + np.arange(frame)[None, :]
    chunks = sig[:, idx]  # (batch, frames, frame)
    if window is not None:
        chunks = chunks * window.astype(np.float64)
    y = np.fft.fft(chunks, axis=-1)
    if at.get("onesided", 1) and signal.shape[-1] == 1:
        y = y[..., :frame // 2 + 1]
    return (_pack(y, signal.dtype),)


@kernel("MelWeightMatrix", 17)
def mel_weight_matrix(ins, at):
    bins, dft_len, rate, lo, hi = (np.asarray(v).reshape(-1)[0] for v in ins)
    bins, dft_len, rate = int(bins), int(dft_len), int(rate)
    n_spec = dft_len // 2 + 1
    lo_mel = 2595 * np.log10(1 + float(lo) / 700)
    hi_mel = 2595 * np.log10(1 + float(hi) / 700)
    step = (hi_mel - lo_mel) / (bins + 2)
    mels = np.arange(bins + 2) * step + lo_mel
    hz = 700 * (10 ** (mels / 2595) - 1)
    edges = ((dft_len + 1) * hz // rate).astype(np.int64)
    out = np.zeros((n_spec, bins))
    for i in range(bins):
        left, center, right = edges[i], edges[i + 1], edges[i + 2]
        if center == left:
            out[center, i] = 1
        else:
            j = np.arange(left, center + 1)
            out[j, i] = (j - left) / (center - left)
        if right > center:
            j = np.arange(center, right)
            out[j, i] = (right - j) / (right - center)
    return (out.astype(np_dtype(at.get("output_datatype") or 1)),)
