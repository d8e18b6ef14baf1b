"""THUDM's golden one-layer ChatGLM (../shared/golden/glm_model.data) as data and as a checkpoint.

The file holds a one-layer model (vocab 5, hidden 32, 8 heads, inner 128) and the
final hidden states of three calls (a prefill and two decodes). It has no lm_head.
`write_checkpoint` turns it into a converted checkpoint whose logits *are* the
hidden states: the vocabulary is padded to 32 (embedding rows 5..31 are zero and
never used) and lm_head is the 32x32 identity. Special ids are chosen so that
ChatGLM's position rule reproduces the golden call layout: [gMASK] = 1, <sop> = 2.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

HIDDEN = 32
INNER = 128
VOCAB = 5
PADDED_VOCAB = 32

# (name, shape) in file order; names are the hub checkpoint's, without "transformer.".
_WEIGHTS = [
    ("word_embeddings.weight", (VOCAB, HIDDEN)),
    ("layers.0.input_layernorm.weight", (HIDDEN,)),
    ("layers.0.input_layernorm.bias", (HIDDEN,)),
    ("layers.0.attention.query_key_value.weight", (3 * HIDDEN, HIDDEN)),
    ("layers.0.attention.query_key_value.bias", (3 * HIDDEN,)),
    ("layers.0.attention.dense.weight", (HIDDEN, HIDDEN)),
    ("layers.0.attention.dense.bias", (HIDDEN,)),
    ("layers.0.post_attention_layernorm.weight", (HIDDEN,)),
    ("layers.0.post_attention_layernorm.bias", (HIDDEN,)),
    ("layers.0.mlp.dense_h_to_4h.weight", (INNER, HIDDEN)),
    ("layers.0.mlp.dense_h_to_4h.bias", (INNER,)),
    ("layers.0.mlp.dense_4h_to_h.weight", (HIDDEN, INNER)),
    ("layers.0.mlp.dense_4h_to_h.bias", (HIDDEN,)),
    ("final_layernorm.weight", (HIDDEN,)),
    ("final_layernorm.bias", (HIDDEN,)),
]

# The three calls that produced y1..y3 (see ../shared/golden/README.md).
CALLS = [
    {"ids": [0, 1, 2], "position_ids": [0, 1, 1], "block_position_ids": [0, 0, 1]},
    {"ids": [3], "position_ids": [1], "block_position_ids": [2]},
    {"ids": [4], "position_ids": [1], "block_position_ids": [3]},
]

CONFIG = {
    "architectures": ["ChatGLMModel"],
    "model_type": "chatglm",
    "vocab_size": PADDED_VOCAB,
    "hidden_size": HIDDEN,
    "num_attention_heads": 8,
    "num_layers": 1,
    "inner_hidden_size": INNER,
    "layernorm_epsilon": 1e-5,
    "max_sequence_length": 64,
    "position_encoding_2d": True,
    "use_cache": True,
    "torch_dtype": "float32",
    # Chosen so that ids [0, 1, 2] read as "context token, [gMASK], <sop>".
    "mask_token_id": 30,
    "gmask_token_id": 1,
    "bos_token_id": 2,
    "eos_token_id": 31,
    "pad_token_id": 29,
}


def default_path() -> Path:
    """Where the golden file lives: $GLM_GOLDEN_DIR, else ../shared/golden next to the repo."""
    env = os.environ.get("GLM_GOLDEN_DIR")
    if env:
        return Path(env) / "glm_model.data"
    return Path(__file__).resolve().parents[2] / "shared" / "golden" / "glm_model.data"


@dataclass
class Golden:
    weights: dict[str, np.ndarray]  # hub names without the "transformer." prefix, float32
    inputs: list[np.ndarray]  # x1, x2, x3 (int32)
    outputs: list[np.ndarray]  # y1 [3, 32], y2 [1, 32], y3 [1, 32] (float32)


def load(path: str | os.PathLike | None = None) -> Golden:
    """Parses glm_model.data; raises ValueError when its size is not the documented one."""
    path = Path(path) if path is not None else default_path()
    raw = path.read_bytes()
    off = 0

    def take(shape: tuple[int, ...], dtype: str) -> np.ndarray:
        nonlocal off
        count = int(np.prod(shape))
        arr = np.frombuffer(raw, dtype=dtype, count=count, offset=off).reshape(shape).copy()
        off += count * 4
        return arr

    weights = {name: take(shape, "<f4") for name, shape in _WEIGHTS}
    inputs, outputs = [], []
    for call in CALLS:
        n = len(call["ids"])
        inputs.append(take((n,), "<i4"))
        outputs.append(take((n, HIDDEN), "<f4"))
    if off != len(raw):
        raise ValueError(f"{path}: expected {off} bytes, found {len(raw)}")
    for x, call in zip(inputs, CALLS, strict=True):
        if x.tolist() != call["ids"]:
            raise ValueError(f"{path}: unexpected input ids {x.tolist()} (want {call['ids']})")
    return Golden(weights=weights, inputs=inputs, outputs=outputs)


def hub_state_dict(golden: Golden) -> dict[str, np.ndarray]:
    """The golden weights as a hub-style state dict (vocab padded, identity lm_head)."""
    sd = {f"transformer.{k}": v for k, v in golden.weights.items()}
    emb = np.zeros((PADDED_VOCAB, HIDDEN), dtype=np.float32)
    emb[:VOCAB] = golden.weights["word_embeddings.weight"]
    sd["transformer.word_embeddings.weight"] = emb
    sd["lm_head.weight"] = np.eye(PADDED_VOCAB, HIDDEN, dtype=np.float32)
    return sd


def write_checkpoint(out_dir: str | os.PathLike, path: str | os.PathLike | None = None) -> Path:
    """Writes config.json + model.safetensors (the converted layout) for the golden model."""
    from safetensors.numpy import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sd = hub_state_dict(load(path))
    save_file({k: np.ascontiguousarray(v) for k, v in sd.items()}, str(out / "model.safetensors"))
    (out / "config.json").write_text(json.dumps(CONFIG, indent=2) + "\n")
    return out
