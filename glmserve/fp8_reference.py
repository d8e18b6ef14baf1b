"""glmserve.reference with FP8 E4M3 where issue 19's modes put it, computed by the CPU
reference codec (glmserve.fp8): what the GPU's FP8 kernels must agree with.

- ``fp8_linears``: every block linear as the CUDA engine's FP8 mode computes it: weights
  quantized once per output channel; a linear over more than ``gemv_max_tokens`` tokens
  (the engine's ``cuda_fp8_gemv_max_tokens``, default 2) also quantizes its activations
  per token on the fly (cuBLASLt's FP8 GEMM), one over at most that many keeps them in the
  model's dtype (the weight-only fp8 GEMV); fp32 accumulation, the scales after (the
  lm_head stays in the model's dtype, as the issue asks unless measured harmless). A
  linear's token count is that of the whole batch, as in an engine step;
- ``int8_lm_head``: the lm_head's weights per-channel int8 (weight-only), as the CUDA
  engine's ``cuda_int8_lm_head`` keeps them in fp8 mode (E4M3 lm_head weights were
  measured harmful: docs/int8.md "FP8");
- ``fp8_kv``: each new token's K (after rotary) and V quantized per (token, head) as an FP8
  KV cache stores them; attention reads them back dequantized.

    model = Fp8Reference.wrap(reference.ChatGLMModel.from_pretrained(d), fp8_linears=True)
    # gemv_max_tokens=0: activations quantized at every token count (the engine before the GEMV)
    reference.generate(model, prompts, max_tokens=32)
"""

from __future__ import annotations

import numpy as np
import torch

from glmserve import fp8
from glmserve.convert import quantize_int8
from glmserve.reference import ChatGLMModel

# The CUDA engine's default cuda_fp8_gemv_max_tokens (backend_src/engine/engine.h).
GEMV_MAX_TOKENS = 2


def _round_trip_rows(x: torch.Tensor) -> torch.Tensor:
    """x quantized per row of its last dimension and dequantized (float32 numpy math)."""
    rows = x.detach().to("cpu", torch.float32).reshape(-1, x.shape[-1]).numpy()
    codes, scale = fp8.quantize_rows(rows)
    back = fp8.dequantize_rows(codes, scale)
    return torch.from_numpy(back).reshape(x.shape).to(device=x.device, dtype=x.dtype)


class Fp8Reference(ChatGLMModel):
    """A ChatGLMModel whose linears and/or KV cache are FP8 (module docstring)."""

    fp8_linears: bool = False
    fp8_kv: bool = False
    gemv_max_tokens: int = GEMV_MAX_TOKENS
    int8_lm_head: bool = False

    @classmethod
    def wrap(
        cls,
        model: ChatGLMModel,
        fp8_linears: bool = False,
        fp8_kv: bool = False,
        gemv_max_tokens: int = GEMV_MAX_TOKENS,
        int8_lm_head: bool = False,
    ):
        if not (fp8_linears or fp8_kv):
            raise ValueError("Fp8Reference: choose fp8_linears and/or fp8_kv")
        if not 0 <= gemv_max_tokens <= 8:
            raise ValueError(
                f"Fp8Reference: gemv_max_tokens must be in [0, 8], got {gemv_max_tokens}"
            )
        m = cls.__new__(cls)
        m.__dict__.update(model.__dict__)
        m.fp8_linears, m.fp8_kv, m.gemv_max_tokens = fp8_linears, fp8_kv, gemv_max_tokens
        m.int8_lm_head = int8_lm_head
        m.w = dict(model.w)
        if int8_lm_head:  # the engine's cuda_int8_lm_head: per-channel int8, weight-only
            t = model.w["lm_head.weight"]
            q, scale = quantize_int8(t)
            m.w["lm_head.weight"] = (q.float() * scale.float()[:, None]).to(t.dtype)
        if fp8_linears:  # the block linears' weights as their FP8 values (per output channel)
            for name, t in model.w.items():
                if (
                    name.startswith("transformer.layers.")
                    and name.endswith("weight")
                    and t.dim() == 2
                ):
                    m.w[name] = _round_trip_rows(t)
        return m

    def linear(self, x: torch.Tensor, weight: str, bias: torch.Tensor | None) -> torch.Tensor:
        tokens = x.numel() // x.shape[-1]  # the batch's tokens, as in an engine step
        if self.fp8_linears and tokens > self.gemv_max_tokens:
            x = _round_trip_rows(x)  # per token: every row of the last dimension
        return super().linear(x, weight, bias)

    def stored_kv(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.fp8_kv:  # [B, heads, T, head_dim]: one scale per (token, head)
            return _round_trip_rows(k), _round_trip_rows(v)
        return k, v


def agreement(a: list[list[int]], b: list[list[int]]) -> float:
    """Mean length of the common prefix of each pair of id lists."""
    lens = []
    for x, y in zip(a, b, strict=True):
        n = 0
        while n < min(len(x), len(y)) and x[n] == y[n]:
            n += 1
        lens.append(n)
    return float(np.mean(lens)) if lens else 0.0
