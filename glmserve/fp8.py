"""FP8 E4M3 (the "fn" variant of Hopper's tensor cores) on the CPU: the reference that the
FP8 modes of issue 19 are checked against. numpy only.

E4M3: 1 sign bit, 4 exponent bits (bias 7), 3 mantissa bits; largest finite value 448
(0x7E), 0x7F / 0xFF are NaN, no infinities; subnormals below 2**-6 in steps of 2**-9.
Encoding rounds to the nearest value, ties to the even code (the OCP FP8 rule); what
lies beyond 448 saturates to +-448 (the quantizers below never produce it: they scale each
row so that its largest magnitude maps to 448).

    codes, scale = quantize_rows(w)          # per output channel (weights) or per token
    w_hat = dequantize_rows(codes, scale)    # float32
"""

from __future__ import annotations

import numpy as np

E4M3_MAX = 448.0
_NAN_CODES = (0x7F, 0xFF)


def _decode_table() -> np.ndarray:
    """float32 [256]: the value of every E4M3 code (NaN for 0x7F and 0xFF)."""
    out = np.empty(256, np.float32)
    for code in range(256):
        sign = -1.0 if code & 0x80 else 1.0
        exp, man = (code >> 3) & 0xF, code & 0x7
        if code in _NAN_CODES:
            out[code] = np.nan
        elif exp == 0:
            out[code] = sign * man * 2.0**-9
        else:
            out[code] = sign * (1.0 + man / 8.0) * 2.0 ** (exp - 7)
    return out


DECODE = _decode_table()
# The non-negative finite codes in increasing value: 0x00 .. 0x7E (their values increase with the code).
_POS_CODES = np.arange(0x7F, dtype=np.uint8)
_POS_VALUES = DECODE[:0x7F].astype(np.float64)


def encode(x: np.ndarray) -> np.ndarray:
    """uint8 E4M3 codes of x (any shape, float): nearest value, ties to the even code,
    saturating at +-448; NaN stays NaN (0x7F, with the sign bit of x)."""
    x = np.asarray(x, dtype=np.float64)
    a = np.minimum(np.abs(x), E4M3_MAX)
    hi = np.clip(np.searchsorted(_POS_VALUES, a, side="left"), 0, len(_POS_VALUES) - 1)
    lo = np.maximum(hi - 1, 0)
    d_lo = a - _POS_VALUES[lo]
    d_hi = _POS_VALUES[hi] - a
    tie_to_hi = (d_hi == d_lo) & (_POS_CODES[hi] % 2 == 0)
    pick_hi = (d_hi < d_lo) | tie_to_hi
    codes = np.where(pick_hi, _POS_CODES[hi], _POS_CODES[lo]).astype(np.uint8)
    codes = np.where(np.isnan(a), np.uint8(0x7F), codes)
    return codes | np.where(np.signbit(x), np.uint8(0x80), np.uint8(0)).astype(np.uint8)


def decode(codes: np.ndarray) -> np.ndarray:
    """float32 values of uint8 E4M3 codes."""
    return DECODE[np.asarray(codes, dtype=np.uint8)]


def quantize_rows(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-row scales (weights [out, in]: per output channel; activations [tokens, in]: per
    token): scale[r] = max |x[r]| / 448 (1 for an all-zero row), codes = encode(x / scale).
    Returns (uint8 codes of x's shape, float32 scales [rows])."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"quantize_rows wants a 2-D array, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("quantize_rows: the array holds NaN or infinity")
    amax = np.abs(x).max(axis=1) if x.shape[1] else np.zeros(x.shape[0], np.float32)
    scale = np.where(amax > 0, amax / E4M3_MAX, 1.0).astype(np.float32)
    return encode(x / scale[:, None]), scale


def dequantize_rows(codes: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """float32 [rows, cols] = decode(codes) * scale[:, None]."""
    return decode(codes) * np.asarray(scale, np.float32)[:, None]


def fp8_linear(x: np.ndarray, codes_w: np.ndarray, scale_w: np.ndarray) -> np.ndarray:
    """y = x @ W^T the way an FP8 GEMM computes it: x quantized per token on the fly, the
    product of the codes' values accumulated in float32, both scales applied after."""
    codes_x, scale_x = quantize_rows(x)
    acc = decode(codes_x) @ decode(codes_w).T
    return acc * scale_x[:, None] * np.asarray(scale_w, np.float32)[None, :]
