"""Settings of the OpenAI-compatible server and the model it serves.

:class:`Settings` travels to uvicorn's worker processes as JSON in the environment
(``GLM_OPENAI_SETTINGS``); the API key never does: it is read from ``GLM_OPENAI_API_KEY``
in every process.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path

from glmserve import contract
from glmserve.adapters import list_adapters
from glmserve.decoder_output import TokenTable
from glmserve.openai_api.protocol import ModelInfo
from glmserve.tokenizer import ChatGLMTokenizer

API_KEY_ENV = "GLM_OPENAI_API_KEY"
SETTINGS_ENV = "GLM_OPENAI_SETTINGS"
DEFAULT_PORT = 9000
DEFAULT_MAX_BODY_BYTES = 1 << 20


@dataclass(frozen=True)
class Settings:
    checkpoint: str  # converted checkpoint dir: ice_text.model + config.json
    triton_url: str = "127.0.0.1:8000"  # Triton's HTTP endpoint
    decoder_model: str = "chatglm_decoder"
    served_model_names: tuple[str, ...] = ()  # () -> the checkpoint folder's name
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES

    def model_names(self) -> tuple[str, ...]:
        return self.served_model_names or (Path(self.checkpoint).resolve().name,)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Settings:
        data = json.loads(text)
        data["served_model_names"] = tuple(data.get("served_model_names") or ())
        return cls(**data)

    @classmethod
    def from_env(cls) -> Settings:
        text = os.environ.get(SETTINGS_ENV)
        if not text:
            raise RuntimeError(
                f"{SETTINGS_ENV} is not set (start with python -m glmserve.openai_api)"
            )
        return cls.from_json(text)


def api_key_from_env() -> str | None:
    return os.environ.get(API_KEY_ENV) or None


@dataclass(frozen=True)
class ServedModel:
    info: ModelInfo
    table: TokenTable


def load_model(settings: Settings) -> ServedModel:
    """The tokenizer (``ice_text.model``) and limits (``config.json``) of the checkpoint."""
    ckpt = Path(settings.checkpoint)
    spm = ckpt / "ice_text.model"
    if not spm.is_file():
        raise FileNotFoundError(
            f"{spm} is missing: the OpenAI server needs the checkpoint's tokenizer "
            "(an ids-only checkpoint serves chatglm_decoder alone)"
        )
    context, vocab = 2048, None
    cfg = ckpt / "config.json"
    if cfg.is_file():
        data = json.loads(cfg.read_text(encoding="utf-8"))
        context = int(data.get("max_sequence_length", context))
        vocab = data.get("vocab_size")
    tokenizer = ChatGLMTokenizer(spm)
    info = ModelInfo(
        settings.model_names(),
        tokenizer,
        contract.Limits(context=context, vocab=vocab),
        tuple(list_adapters(ckpt)),  # served as "<name>:<adapter>"
    )
    return ServedModel(info, TokenTable(tokenizer))
