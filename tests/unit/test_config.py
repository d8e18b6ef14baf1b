"""ChatGLMConfig: the real config.json reads; every bad field is named in the error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from glmserve.config import ChatGLMConfig, ConfigError

# THUDM/chatglm-6b's config.json (revision 8b7d335).
REAL = {
    "_name_or_path": "THUDM/chatglm-6b",
    "architectures": ["ChatGLMModel"],
    "auto_map": {"AutoConfig": "configuration_chatglm.ChatGLMConfig"},
    "bos_token_id": 130004,
    "eos_token_id": 130005,
    "mask_token_id": 130000,
    "gmask_token_id": 130001,
    "pad_token_id": 3,
    "hidden_size": 4096,
    "inner_hidden_size": 16384,
    "layernorm_epsilon": 1e-05,
    "max_sequence_length": 2048,
    "model_type": "chatglm",
    "num_attention_heads": 32,
    "num_layers": 28,
    "position_encoding_2d": True,
    "torch_dtype": "float16",
    "transformers_version": "4.23.1",
    "use_cache": True,
    "vocab_size": 130528,
}


def test_real_config(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps(REAL))
    cfg = ChatGLMConfig.from_json(tmp_path)  # a directory works too
    assert cfg.head_dim == 128 and cfg.rotary_dim == 64
    assert cfg.alpha == pytest.approx(56**0.5)
    assert not cfg.int8 and cfg.glmserve_format is None
    d = cfg.to_dict()
    assert "auto_map" not in d and "glmserve_format" not in d
    assert ChatGLMConfig.from_dict(d) == cfg


def test_converted_fields() -> None:
    cfg = ChatGLMConfig.from_dict(
        {**REAL, "glmserve_format": 1, "quantization": {"int8": True, "lm_head": False}}
    )
    assert cfg.int8 and not cfg.int8_lm_head
    assert cfg.to_dict()["quantization"] == {"int8": True, "lm_head": False}


def test_alpha_does_not_follow_num_layers() -> None:
    # THUDM's blocks always use their default num_layers=28 (the golden data needs it).
    assert ChatGLMConfig.from_dict({**REAL, "num_layers": 1}).alpha == pytest.approx(56**0.5)


@pytest.mark.parametrize(
    "change, needle",
    [
        ({"hidden_size": None}, "'hidden_size'"),
        ({"num_layers": "28"}, "'num_layers' must be an integer"),
        ({"num_attention_heads": True}, "'num_attention_heads' must be an integer"),
        ({"vocab_size": 0}, "'vocab_size' must be > 0"),
        ({"hidden_size": 4001}, "not divisible by 'num_attention_heads'"),
        ({"hidden_size": 4096 + 32 * 2, "inner_hidden_size": 100}, "divisible by 4"),
        ({"layernorm_epsilon": -1.0}, "'layernorm_epsilon'"),
        ({"position_encoding_2d": False}, "'position_encoding_2d'"),
        ({"position_encoding_2d": "yes"}, "must be a boolean"),
        ({"bos_token_id": 130528}, "'bos_token_id' = 130528 is outside the vocabulary"),
        ({"torch_dtype": "int8"}, "'torch_dtype'"),
        ({"glmserve_format": 2}, "'glmserve_format'"),
        ({"quantization": {"int8": "yes"}}, "'quantization'"),
    ],
)
def test_errors_name_the_field(change: dict, needle: str) -> None:
    data = {**REAL, **change}
    data = {k: v for k, v in data.items() if v is not None}
    with pytest.raises(ConfigError) as exc:
        ChatGLMConfig.from_dict(data)
    assert needle in str(exc.value)


def test_missing_fields_listed() -> None:
    data = {k: v for k, v in REAL.items() if k not in ("inner_hidden_size", "pad_token_id")}
    with pytest.raises(ConfigError, match="'inner_hidden_size', 'pad_token_id'"):
        ChatGLMConfig.from_dict(data)


def test_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        ChatGLMConfig.from_json(tmp_path / "nope.json")
    bad = tmp_path / "config.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        ChatGLMConfig.from_json(bad)
    bad.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="expected a JSON object"):
        ChatGLMConfig.from_json(bad)
