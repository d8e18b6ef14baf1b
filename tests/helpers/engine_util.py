"""Helpers shared by tests/engine/test_engine*.py (no tests here).

`engine_module()` imports glmserve._engine or skips (it is built by `make build`);
`tiny_dir()` is the demo checkpoint (`make demo-model`) or a skip;
`write_checkpoint(dir, ...)` writes a small random converted checkpoint with safetensors.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "models" / "chatglm-tiny"

# Special ids of the small random checkpoints.
GMASK, MASK, BOS, EOS, PAD = 60, 59, 61, 62, 0


def engine_module():
    try:
        from glmserve import _engine
    except ImportError as e:  # pragma: no cover - depends on the build
        pytest.skip(f"glmserve._engine is not built (run: make build): {e}")
    return _engine


def cuda_engine_module():
    """glmserve._engine for the GPU tests, or skip saying why (no torch, no CUDA device, not
    built). torch is imported first: importing it after the engine module segfaulted."""
    try:
        import torch
    except ImportError:
        pytest.skip("torch is not installed")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    return engine_module()


def tiny_dir() -> Path:
    if not (TINY / "model.safetensors").exists():
        pytest.skip(f"{TINY} is missing (run: make demo-model)")
    return TINY


def tiny_dir_or_make(tmp_path_factory) -> Path:
    """The demo tiny model (with its hub copy), or one made under pytest's temp dir (GPU
    machines without `make demo-model`)."""
    if (TINY / "model.safetensors").exists() and (TINY / "hub" / "model.safetensors").exists():
        return TINY
    from glmserve import tiny as tiny_mod

    out = tmp_path_factory.mktemp("tiny") / "chatglm-tiny"
    assert tiny_mod.main(["--out", str(out)]) == 0
    return out


def build_dir() -> Path:
    return REPO / os.environ.get("BUILD", "build") / "cmake"


def small_config(**over) -> dict:
    cfg = {
        "vocab_size": 64,
        "hidden_size": 32,
        "num_attention_heads": 4,
        "num_layers": 2,
        "inner_hidden_size": 64,
        "layernorm_epsilon": 1e-5,
        "max_sequence_length": 256,
        "position_encoding_2d": True,
        "bos_token_id": BOS,
        "eos_token_id": EOS,
        "mask_token_id": MASK,
        "gmask_token_id": GMASK,
        "pad_token_id": PAD,
        "torch_dtype": "float32",
        "glmserve_format": 1,
    }
    cfg.update(over)
    return cfg


def small_state_dict(cfg: dict, seed: int = 0, force_eos: bool = False) -> dict[str, np.ndarray]:
    """Random weights with the hub names; force_eos makes <eop> the argmax everywhere."""
    rng = np.random.default_rng(seed)
    h, i, v = cfg["hidden_size"], cfg["inner_hidden_size"], cfg["vocab_size"]

    def u(*shape, scale=1.0):
        fan_in = shape[-1] if len(shape) == 2 else 1
        return (rng.uniform(-1, 1, size=shape) * scale / np.sqrt(fan_in)).astype(np.float32)

    sd = {"transformer.word_embeddings.weight": u(v, h, scale=np.sqrt(h))}
    for layer in range(cfg["num_layers"]):
        p = f"transformer.layers.{layer}."
        sd[p + "input_layernorm.weight"] = (1 + 0.1 * u(h)).astype(np.float32)
        sd[p + "input_layernorm.bias"] = 0.1 * u(h)
        sd[p + "attention.query_key_value.weight"] = u(3 * h, h, scale=3.0)
        sd[p + "attention.query_key_value.bias"] = 0.1 * u(3 * h)
        sd[p + "attention.dense.weight"] = u(h, h)
        sd[p + "attention.dense.bias"] = 0.1 * u(h)
        sd[p + "post_attention_layernorm.weight"] = (1 + 0.1 * u(h)).astype(np.float32)
        sd[p + "post_attention_layernorm.bias"] = 0.1 * u(h)
        sd[p + "mlp.dense_h_to_4h.weight"] = u(i, h)
        sd[p + "mlp.dense_h_to_4h.bias"] = 0.1 * u(i)
        sd[p + "mlp.dense_4h_to_h.weight"] = u(h, i)
        sd[p + "mlp.dense_4h_to_h.bias"] = 0.1 * u(h)
    sd["transformer.final_layernorm.weight"] = np.ones(h, np.float32)
    sd["transformer.final_layernorm.bias"] = np.zeros(h, np.float32)
    sd["lm_head.weight"] = u(v, h, scale=4.0)
    if force_eos:
        sd["transformer.final_layernorm.weight"] = np.zeros(h, np.float32)
        sd["transformer.final_layernorm.bias"] = np.ones(h, np.float32)
        sd["lm_head.weight"] = np.zeros((v, h), np.float32)
        sd["lm_head.weight"][cfg["eos_token_id"]] = 1.0
    return sd


def quantize_int8(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scale = (np.abs(w).max(axis=1) / 127.0).astype(np.float16)
    s = np.where(scale.astype(np.float32) == 0, 1, scale.astype(np.float32))
    q = np.clip(np.round(w / s[:, None]), -127, 127).astype(np.int8)
    return q, scale


def write_checkpoint(
    out: Path,
    seed: int = 0,
    dtype: str = "float32",
    int8: bool = False,
    force_eos: bool = False,
    state: dict[str, np.ndarray] | None = None,
    **cfg_over,
) -> Path:
    from safetensors.numpy import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = small_config(torch_dtype=dtype, **cfg_over)
    sd = state if state is not None else small_state_dict(cfg, seed, force_eos)
    np_dtype = np.float16 if dtype == "float16" else np.float32
    tensors = {}
    for name, w in sd.items():
        linear = name.endswith(".weight") and w.ndim == 2 and ".layers." in name
        if int8 and linear:
            q, scale = quantize_int8(w.astype(np.float32))
            tensors[name] = q
            tensors[name + "_scale"] = scale
        else:
            tensors[name] = np.ascontiguousarray(w.astype(np_dtype))
    if int8:
        cfg["quantization"] = {"int8": True, "lm_head": False}
    save_file(tensors, str(out / "model.safetensors"))
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    return out


def prompt(rng: np.random.Generator, n: int, vocab_hi: int, gmask: int, bos: int) -> list[int]:
    """n context ids (the last one [gMASK]) followed by <sop>."""
    ids = rng.integers(5, vocab_hi, size=n - 1).tolist()
    return ids + [gmask, bos]
