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


def test_special_ids_from_takes_the_tokenizers_ids_and_keeps_the_shapes(tmp_path):
    ids = {"bos_token_id": 4, "eos_token_id": 5, "mask_token_id": 6, "gmask_token_id": 7}
    src = tmp_path / "tok.json"
    src.write_text(json.dumps({**ids, "pad_token_id": 3, "hidden_size": 64}))
    assert main([str(tmp_path / "ck"), "--special-ids-from", str(src)]) == 0
    cfg = json.loads((tmp_path / "ck" / "config.json").read_text())
    assert cfg == {**REAL_CONFIG, **ids, "pad_token_id": 3}
    assert cfg["hidden_size"] == 4096 and REAL_CONFIG["eos_token_id"] != 5


def test_special_ids_from_a_config_without_them_is_refused(tmp_path, capsys):
    src = tmp_path / "tok.json"
    src.write_text(json.dumps({"bos_token_id": 4}))
    try:
        main([str(tmp_path / "ck"), "--special-ids-from", str(src)])
    except SystemExit as e:
        assert e.code == 2
    else:
        raise AssertionError("no error for a config without special ids")
    err = capsys.readouterr().err
    assert "--special-ids-from" in err and "eos_token_id" in err and "pad_token_id" in err
    assert not (tmp_path / "ck").exists()
