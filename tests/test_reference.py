"""The reference model against THUDM's golden data, and its batching / caching invariants."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from glmserve import golden
from glmserve.reference import (
    ChatGLMModel,
    attention_allowed,
    golden_forward,
    position_ids_2d,
    rotary_inv_freq,
)

needs_golden = pytest.mark.skipif(
    not golden.default_path().is_file(), reason=f"golden data not found at {golden.default_path()}"
)


@pytest.fixture(scope="module")
def golden_dir(tmp_path_factory: pytest.TempPathFactory):
    return golden.write_checkpoint(tmp_path_factory.mktemp("golden"))


def _golden_errors(golden_dir, dtype: torch.dtype) -> list[float]:
    model = ChatGLMModel.from_pretrained(golden_dir, dtype=dtype)
    outs = golden_forward(model, golden.CALLS)
    ref = golden.load().outputs
    return [
        float(np.abs(o.numpy()[:, : golden.HIDDEN] - y).max())
        for o, y in zip(outs, ref, strict=True)
    ]


@needs_golden
def test_golden_fp32(golden_dir) -> None:
    errs = _golden_errors(golden_dir, torch.float32)
    assert max(errs) <= 1e-5, errs


@needs_golden
def test_golden_fp16(golden_dir) -> None:
    # fp16 matmul/layernorm run on CPU in torch >= 2.1; errors are fp16 rounding (~1e-3).
    errs = _golden_errors(golden_dir, torch.float16)
    assert max(errs) <= 1e-2, errs


def test_positions_and_mask_rule() -> None:
    # prompt "a b [gMASK] <sop>" (n=4, c=3, g=2) followed by two generated tokens.
    t = torch.arange(6)
    pos, block = position_ids_2d(t, c=3, g=2)
    assert pos.tolist() == [0, 1, 2, 2, 2, 2]
    assert block.tolist() == [0, 0, 0, 1, 2, 3]
    allowed = attention_allowed(t, t, c=3).int().tolist()
    assert allowed[0] == [1, 1, 1, 0, 0, 0]  # context is bidirectional, sees no later token
    assert allowed[3] == [1, 1, 1, 1, 0, 0]  # <sop> sees the context and itself
    assert allowed[5] == [1, 1, 1, 1, 1, 1]


def test_rotary_inv_freq_is_fp16_rounded() -> None:
    inv = rotary_inv_freq(64)
    exact = 1.0 / (10000 ** (torch.arange(0, 64, 2, dtype=torch.float64) / 64))
    assert inv.dtype == torch.float16 and inv.shape == (32,)
    assert not torch.equal(inv.double(), exact)  # rounding happened
    assert torch.allclose(inv.double(), exact, rtol=1e-3)
