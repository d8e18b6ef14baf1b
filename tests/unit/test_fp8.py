"""glmserve.fp8: the CPU reference of FP8 E4M3 (issue 19), checked against torch's own
float8_e4m3fn cast as an independent oracle, plus the quantizers' round trip and scales
on odd sizes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from glmserve import fp8


def torch_codes(x: np.ndarray) -> np.ndarray:
    t = torch.from_numpy(np.asarray(x, np.float32)).to(torch.float8_e4m3fn)
    return t.view(torch.uint8).numpy()


def test_decode_table_has_the_e4m3_landmarks():
    assert fp8.DECODE[0x7E] == 448.0 and fp8.DECODE[0xFE] == -448.0
    assert fp8.DECODE[0x01] == 2.0**-9  # smallest subnormal
    assert fp8.DECODE[0x08] == 2.0**-6  # smallest normal
    assert fp8.DECODE[0x38] == 1.0
    assert np.isnan(fp8.DECODE[0x7F]) and np.isnan(fp8.DECODE[0xFF])
    finite = fp8.DECODE[np.isfinite(fp8.DECODE)]
    assert len(finite) == 254 and np.all(np.diff(fp8.DECODE[:0x7F]) > 0)


def test_every_code_round_trips():
    codes = np.array([c for c in range(256) if c not in (0x7F, 0xFF)], np.uint8)
    back = fp8.encode(fp8.decode(codes))
    # +0 and -0 are two codes of one value: each keeps its sign
    assert np.array_equal(back, codes)


def test_encode_matches_torch_on_random_and_tie_values():
    rng = np.random.default_rng(0)
    x = np.concatenate(
        [
            rng.normal(0, 1, 5001) * 10.0 ** rng.uniform(-4, 2.6, 5001),
            # exact midpoints between neighbouring codes: ties go to the even code
            (fp8.DECODE[1:0x7E] + fp8.DECODE[2:0x7F]) / 2,
            -(fp8.DECODE[1:0x7E] + fp8.DECODE[2:0x7F]) / 2,
            [0.0, -0.0, 447.9, 448.0, -448.0, 2.0**-10, 3 * 2.0**-10],
        ]
    ).astype(np.float32)
    x = x[np.abs(x) <= 448]
    assert np.array_equal(fp8.encode(x), torch_codes(x))


def test_encode_saturates_and_keeps_nan():
    codes = fp8.encode(np.array([1e6, -500.0, np.nan], np.float32))
    assert codes[0] == 0x7E and codes[1] == 0xFE and (codes[2] & 0x7F) == 0x7F


@pytest.mark.parametrize("shape", [(1, 1), (7, 13), (33, 4097), (3, 0)])
def test_quantize_rows_round_trip_and_scales(shape):
    rng = np.random.default_rng(shape[0] * 31 + shape[1])
    x = (rng.standard_normal(shape) * rng.uniform(0.01, 50, (shape[0], 1))).astype(np.float32)
    if shape[0] > 2:
        x[2] = 0.0  # an all-zero row
    codes, scale = fp8.quantize_rows(x)
    assert codes.shape == x.shape and codes.dtype == np.uint8 and scale.shape == (shape[0],)
    back = fp8.dequantize_rows(codes, scale)
    if shape[1]:
        amax = np.abs(x).max(axis=1)
        # each row's largest magnitude maps to 448 exactly
        nz = amax > 0
        assert np.allclose(np.abs(back).max(axis=1)[nz], amax[nz], rtol=1e-6)
        # 3 mantissa bits: a relative error of at most 2**-4 for normal values
        normal = np.abs(x) >= scale[:, None] * 2.0**-6
        rel = np.abs(back - x)[normal] / np.abs(x)[normal]
        assert rel.max() <= 2.0**-4 + 1e-7
        assert np.all(back[~nz] == 0)  # zero rows stay zero


def test_quantize_rows_refuses_bad_input():
    with pytest.raises(ValueError, match="2-D"):
        fp8.quantize_rows(np.zeros(4, np.float32))
    with pytest.raises(ValueError, match="NaN"):
        fp8.quantize_rows(np.array([[1.0, np.inf]], np.float32))


def test_fp8_linear_is_close_to_the_float_product():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((5, 257)).astype(np.float32)
    w = (rng.standard_normal((130, 257)) / 16).astype(np.float32)
    cw, sw = fp8.quantize_rows(w)
    y = fp8.fp8_linear(x, cw, sw)
    ref = x @ w.T
    assert np.linalg.norm(y - ref) / np.linalg.norm(ref) < 0.05
    # and it is exactly the product of the dequantized operands
    cx, sx = fp8.quantize_rows(x)
    assert np.allclose(
        y, fp8.dequantize_rows(cx, sx) @ fp8.dequantize_rows(cw, sw).T, rtol=1e-5, atol=1e-6
    )
