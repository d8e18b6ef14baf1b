"""Helpers shared by tests/test_adapters_*.py (no tests here)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from glmserve.config import ChatGLMConfig
from glmserve.convert import main as convert_main
from glmserve.tiny import tiny_config, tiny_weights

SPECIAL = {
    "mask_token_id": 60,
    "gmask_token_id": 61,
    "bos_token_id": 62,
    "eos_token_id": 63,
    "pad_token_id": 0,
}


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


def one_thread() -> object:
    """Body of the tests' autouse fixture: tiny models run faster single-threaded."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
