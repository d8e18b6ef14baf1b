"""W8A8 int8 linears on the CPU: the reference of the CUDA engine's W8A8 path (issue 19,
``backend_src/engine/cuda/w8a8.cu``, docs/int8.md "W8A8 at large batch").

Weights: the converter's int8 (``glmserve.convert.quantize_int8``: per output channel, fp16
scale). Activations: quantized per token on the fly,

    sx[m]     = max_k |x[m, k]| / 127            (float32; 1 when that is not > 0)
    qx[m, k]  = round_half_even(x[m, k] / sx[m]) clamped to [-127, 127]
    y[m, n]   = (float32(sum_k qx[m, k] q[n, k]) * sx[m]) * scale[n] + bias[n]

with the integer sum exact (int32 on the GPU's tensor cores).

    model = W8A8Reference.wrap(reference.ChatGLMModel.from_pretrained(d))
    reference.generate(model, prompts, max_tokens=32)
"""

from __future__ import annotations

import numpy as np
import torch

from glmserve.convert import quantize_int8
from glmserve.reference import ChatGLMModel


def quantize_tokens(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-row int8 codes and float32 scales of x [..., K] (the module docstring's rule)."""
    x = np.asarray(x, dtype=np.float32)
    amax = np.abs(x).max(axis=-1, keepdims=True) if x.shape[-1] else np.zeros(x.shape[:-1] + (1,))
    scale = (amax.astype(np.float32) / np.float32(127)).astype(np.float32)
    scale = np.where(scale > 0, scale, np.float32(1)).astype(np.float32)
    codes = np.clip(np.rint(x / scale), -127, 127).astype(np.int8)  # np.rint: ties to even
    return codes, scale[..., 0]


def w8a8_linear(
    x: np.ndarray, q: np.ndarray, scale: np.ndarray, bias: np.ndarray | None = None
) -> np.ndarray:
    """y [M, N] float32 from x [M, K] float, q [N, K] int8 and scale [N] (fp16 or float32)."""
    qx, sx = quantize_tokens(x)
    acc = qx.astype(np.int64) @ q.astype(np.int64).T  # exact, as the int32 accumulators
    y = (acc.astype(np.float32) * sx[:, None]) * np.asarray(scale, np.float32)[None, :]
    if bias is not None:
        y = y + np.asarray(bias, np.float32)[None, :]
    return y.astype(np.float32)


class W8A8Reference(ChatGLMModel):
    """A ChatGLMModel whose block linears are W8A8 (module docstring); the lm_head stays in
    the model's dtype, as the engine keeps it unless `int8_lm_head` is on."""

    q8: dict[str, tuple[np.ndarray, np.ndarray]]

    @classmethod
    def wrap(cls, model: ChatGLMModel) -> W8A8Reference:
        m = cls.__new__(cls)
        m.__dict__.update(model.__dict__)
        m.q8 = {}
        for name, t in model.w.items():
            if name.startswith("transformer.layers.") and name.endswith("weight") and t.dim() == 2:
                q, s = quantize_int8(t)
                m.q8[name] = (q.numpy(), s.numpy())
        return m

    def linear(self, x: torch.Tensor, weight: str, bias: torch.Tensor | None) -> torch.Tensor:
        if weight not in self.q8:
            return super().linear(x, weight, bias)
        q, s = self.q8[weight]
        rows = x.detach().to("cpu", torch.float32).reshape(-1, x.shape[-1]).numpy()
        b = None if bias is None else bias.detach().to("cpu", torch.float32).numpy()
        y = w8a8_linear(rows, q, s, b)
        return torch.from_numpy(y).reshape(*x.shape[:-1], q.shape[0]).to(x.device, x.dtype)
