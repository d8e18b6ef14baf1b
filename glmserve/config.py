"""The ChatGLM-6B configuration, read from a hub-style ``config.json`` and validated once.

Only the fields that decide the computation are kept (the real checkpoint's
``config.json`` carries more, e.g. ``auto_map``; they are ignored). Every error names
the offending field, so a broken checkpoint is diagnosed from one line.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A config.json that cannot describe a ChatGLM model; the message names the field."""


# field name -> accepted Python types (bool is not an int here).
_INT_FIELDS = (
    "vocab_size",
    "hidden_size",
    "num_attention_heads",
    "num_layers",
    "inner_hidden_size",
    "max_sequence_length",
    "bos_token_id",
    "eos_token_id",
    "mask_token_id",
    "gmask_token_id",
    "pad_token_id",
)
# THUDM's GLMBlock default num_layers, which fixes the residual alpha (see ChatGLMConfig.alpha).
ALPHA_NUM_LAYERS = 28
_OPTIONAL_FIELDS = ("torch_dtype", "glmserve_format", "quantization")
_TORCH_DTYPES = ("float16", "float32", "bfloat16")

# ChatGLM-6B's shapes and special ids as a converted checkpoint's config.json (format 1):
# what the benchmarks, the GPU tests and config-only checkpoints (glmserve.config_only)
# run with random weights.
REAL_CONFIG: dict[str, Any] = {
    "vocab_size": 130528,
    "hidden_size": 4096,
    "num_attention_heads": 32,
    "num_layers": 28,
    "inner_hidden_size": 16384,
    "layernorm_epsilon": 1e-05,
    "max_sequence_length": 2048,
    "position_encoding_2d": True,
    "bos_token_id": 130004,
    "eos_token_id": 130005,
    "mask_token_id": 130000,
    "gmask_token_id": 130001,
    "pad_token_id": 3,
    "torch_dtype": "float16",
    "glmserve_format": 1,
}


@dataclass(frozen=True)
class ChatGLMConfig:
    vocab_size: int
    hidden_size: int
    num_attention_heads: int
    num_layers: int
    inner_hidden_size: int
    layernorm_epsilon: float
    max_sequence_length: int
    position_encoding_2d: bool
    bos_token_id: int
    eos_token_id: int
    mask_token_id: int
    gmask_token_id: int
    pad_token_id: int
    torch_dtype: str = "float16"
    # Converted checkpoints only (absent in hub configs).
    glmserve_format: int | None = None
    quantization: dict[str, bool] | None = None

    def __post_init__(self) -> None:
        self._validate()

    # ------------------------------------------------------------------ derived
    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def rotary_dim(self) -> int:
        """Width of one rotary half (2D rotary: head_dim / 2)."""
        return self.head_dim // 2

    @property
    def alpha(self) -> float:
        """ChatGLM's residual scale: sqrt(2 * 28) = sqrt(56), whatever ``num_layers`` is.

        THUDM's ``ChatGLMModel`` builds its ``GLMBlock``s without passing ``num_layers``,
        so every block uses the default 28. For ChatGLM-6B (28 layers) this is the
        documented sqrt(2 * num_layers); for smaller models (the golden one-layer model,
        our tiny demo model) it is still sqrt(56), and the golden data confirms it.
        """
        return (2 * ALPHA_NUM_LAYERS) ** 0.5

    @property
    def int8(self) -> bool:
        return bool(self.quantization and self.quantization.get("int8"))

    @property
    def fp8(self) -> bool:
        return bool(self.quantization and self.quantization.get("fp8"))

    @property
    def int8_lm_head(self) -> bool:
        return bool(self.quantization and self.quantization.get("lm_head"))

    # --------------------------------------------------------------- validation
    def _validate(self) -> None:
        for name in _INT_FIELDS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"config field {name!r} must be an integer, got {value!r}")
        for name in ("vocab_size", "hidden_size", "num_attention_heads", "num_layers"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"config field {name!r} must be > 0, got {getattr(self, name)}")
        for name in ("inner_hidden_size", "max_sequence_length"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"config field {name!r} must be > 0, got {getattr(self, name)}")
        eps = self.layernorm_epsilon
        if isinstance(eps, bool) or not isinstance(eps, int | float) or not eps > 0:
            raise ConfigError(f"config field 'layernorm_epsilon' must be a number > 0, got {eps!r}")
        if not isinstance(self.position_encoding_2d, bool):
            raise ConfigError(
                "config field 'position_encoding_2d' must be a boolean, "
                f"got {self.position_encoding_2d!r}"
            )
        if not self.position_encoding_2d:
            raise ConfigError(
                "config field 'position_encoding_2d' is false: only ChatGLM's 2D rotary "
                "positions (true) are supported"
            )
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(
                f"config field 'hidden_size' ({self.hidden_size}) is not divisible by "
                f"'num_attention_heads' ({self.num_attention_heads})"
            )
        if self.head_dim % 4:
            raise ConfigError(
                f"head dim hidden_size/num_attention_heads = {self.head_dim} must be divisible "
                "by 4 for 2D rotary (two halves, each rotated in pairs)"
            )
        for name in ("bos_token_id", "eos_token_id", "mask_token_id", "gmask_token_id"):
            value = getattr(self, name)
            if not 0 <= value < self.vocab_size:
                raise ConfigError(
                    f"config field {name!r} = {value} is outside the vocabulary [0, {self.vocab_size})"
                )
        if self.pad_token_id < 0:
            raise ConfigError(f"config field 'pad_token_id' must be >= 0, got {self.pad_token_id}")
        if self.torch_dtype not in _TORCH_DTYPES:
            raise ConfigError(
                f"config field 'torch_dtype' must be one of {_TORCH_DTYPES}, got {self.torch_dtype!r}"
            )
        if self.glmserve_format is not None and self.glmserve_format != 1:
            raise ConfigError(
                f"config field 'glmserve_format' = {self.glmserve_format!r}: only format 1 is known"
            )
        if self.quantization is not None:
            q = self.quantization
            if not isinstance(q, dict) or not all(
                isinstance(q.get(k, False), bool) for k in ("int8", "lm_head", "fp8")
            ):
                raise ConfigError(
                    "config field 'quantization' must be an object like "
                    f'{{"int8": true, "lm_head": false}} or {{"fp8": true}}, got {q!r}'
                )
            if q.get("int8") and q.get("fp8"):
                raise ConfigError(
                    "config field 'quantization': int8 and fp8 are two formats, not both"
                )

    # ------------------------------------------------------------------- I/O
    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> ChatGLMConfig:
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: expected a JSON object, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        required = {f.name for f in fields(cls) if f.name not in _OPTIONAL_FIELDS}
        missing = sorted(required - data.keys())
        if missing:
            raise ConfigError(f"{source}: missing config field(s) {', '.join(map(repr, missing))}")
        kwargs = {k: data[k] for k in known if k in data}
        if isinstance(kwargs.get("layernorm_epsilon"), int) and not isinstance(
            kwargs["layernorm_epsilon"], bool
        ):
            kwargs["layernorm_epsilon"] = float(kwargs["layernorm_epsilon"])
        try:
            return cls(**kwargs)
        except ConfigError as e:
            raise ConfigError(f"{source}: {e}") from None

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> ChatGLMConfig:
        """Reads ``path`` (a config.json, or a checkpoint directory holding one)."""
        p = Path(path)
        if p.is_dir():
            p = p / "config.json"
        if not p.is_file():
            raise ConfigError(f"{p}: config.json not found")
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ConfigError(f"{p}: not valid JSON ({e})") from None
        return cls.from_dict(data, source=str(p))

    def to_dict(self) -> dict[str, Any]:
        """The hub fields (plus glmserve_format / quantization when set)."""
        d = asdict(self)
        for k in ("glmserve_format", "quantization"):
            if d[k] is None:
                del d[k]
        return d
