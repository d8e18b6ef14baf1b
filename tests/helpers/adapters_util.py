"""Helpers shared by the adapter tests (unit, engine and gpu levels; no tests here)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors.torch import save_file

from glmserve.adapter_fixtures import write_ptuning_checkpoint
from glmserve.config import ChatGLMConfig
from glmserve.convert import main as convert_main
from glmserve.tiny import make_tiny, tiny_config, tiny_weights

SPECIAL = {
    "mask_token_id": 60,
    "gmask_token_id": 61,
    "bos_token_id": 62,
    "eos_token_id": 63,
    "pad_token_id": 0,
}


# Two P-Tuning v2 adapters of the tiny demo model, name -> (pre_seq_len, prefix_projection):
# P = 8 (a partial KV block: copy-on-write per request) and P = 32 (two full blocks).
TINY_ADAPTERS = {"style": (8, True), "terse": (32, False)}


def tiny_with_adapters(root: Path, seed: int = 11) -> Path:
    """The tiny demo model converted under ``root/tiny``, with TINY_ADAPTERS added by the
    converter from random checkpoints in the official recipe's format (seeds seed, seed + 1)."""
    out = make_tiny(root / "tiny")
    cfg = ChatGLMConfig.from_json(out)
    for i, (name, (p, projection)) in enumerate(TINY_ADAPTERS.items()):
        src = write_ptuning_checkpoint(root / name, cfg, p, projection, seed=seed + i)
        args = ["--ptuning", str(src), "--base", str(out), "--adapter-name", name, "--quiet"]
        assert convert_main(args) == 0
    return out


def small_config(**sizes: int) -> ChatGLMConfig:
    """3 layers, hidden 64, 4 heads, inner 96 (every linear has its own shape), vocab 64."""
    d = tiny_config(64, SPECIAL).to_dict()
    d.update(hidden_size=64, num_attention_heads=4, num_layers=3, inner_hidden_size=96)
    d.update(sizes)
    return ChatGLMConfig.from_dict(d)


def write_small_hub(d: Path, seed: int) -> Path:
    """A hub-style small_config() model with tiny_weights(seed) in model.safetensors."""
    cfg = small_config()
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps(cfg.to_dict()))
    save_file(tiny_weights(cfg, seed=seed), str(d / "model.safetensors"))
    return d


def run_convert(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    """``python -m glmserve.convert ARGV --quiet``: (exit code, stderr)."""
    try:
        code = convert_main([*argv, "--quiet"])
    except SystemExit as e:  # argparse errors
        code = int(e.code or 0)
    return code, capsys.readouterr().err
