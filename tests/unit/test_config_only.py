"""glmserve.config_only: the config-only checkpoint the GPU scripts serve with random weights."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from safetensors import safe_open

from glmserve.config import REAL_CONFIG, ChatGLMConfig
from glmserve.config_only import main

ROOT = Path(__file__).resolve().parents[2]


def test_default_is_chatglm_6b_and_an_empty_safetensors(tmp_path):
    assert main([str(tmp_path / "ck")]) == 0
    cfg = json.loads((tmp_path / "ck" / "config.json").read_text())
    assert cfg == REAL_CONFIG
    assert ChatGLMConfig.from_dict(cfg).hidden_size == 4096
    with safe_open(str(tmp_path / "ck" / "model.safetensors"), framework="numpy") as f:
        assert list(f.keys()) == []


def test_config_option_copies_the_given_config(tmp_path):
    tiny = ROOT / "models" / "chatglm-tiny" / "config.json"
    src = tmp_path / "src.json"
    src.write_text(
        tiny.read_text() if tiny.exists() else json.dumps({**REAL_CONFIG, "num_layers": 2})
    )
    r = subprocess.run(
        [sys.executable, "-m", "glmserve.config_only", str(tmp_path / "ck"), "--config", str(src)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "ck" / "config.json").read_text()) == json.loads(src.read_text())
