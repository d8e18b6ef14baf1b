"""P-Tuning v2 checkpoints of THUDM's ``ptuning/`` recipe -> a prefix adapter (docs/adapters.md).

The recipe saves only the trainable parameters, ``transformer.prefix_encoder.*``, with
``save_pretrained`` (``pytorch_model.bin``, or ``model.safetensors`` with newer
transformers) next to a ``config.json`` that carries ``pre_seq_len`` and
``prefix_projection``. THUDM's ``PrefixEncoder`` maps the indices 0..P-1 to
``2 * num_layers * hidden`` values per position:

- ``prefix_projection`` false: ``embedding.weight`` [P, 2*L*H] is the output;
- true: ``embedding.weight`` [P, H] -> ``trans.0`` Linear(H, H) -> tanh -> ``trans.2``
  Linear(H, 2*L*H).

``get_prompt`` then views the output as [P, 2*L, heads, head_dim] and gives layer i the
slots 2i (key) and 2i+1 (value). The official recipe runs the encoder in fp32; so do we,
once, here: serving only reads the resulting K/V (glmserve.adapters).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from glmserve._checkpoint import FLOAT_DTYPES, CheckpointError, find_source, iter_shard
from glmserve.adapters import (
    AdapterError,
    PrefixKV,
    check_can_write,
    positive_int,
    read_json_object,
    write_prefix_adapter,
)
from glmserve.config import ChatGLMConfig, ConfigError

PREFIX_ENCODER = "transformer.prefix_encoder."
PROJECTION_NAMES = ("trans.0.weight", "trans.0.bias", "trans.2.weight", "trans.2.bias")


@dataclass(frozen=True)
class PtuningConfig:
    """What decides the prefix: its length, the encoder kind, and the model's sizes."""

    pre_seq_len: int
    prefix_projection: bool
    num_layers: int
    hidden_size: int
    num_attention_heads: int

    def encoder_shapes(self) -> dict[str, tuple[int, ...]]:
        """The prefix encoder's tensors (names without ``transformer.prefix_encoder.``)."""
        p, h, out = self.pre_seq_len, self.hidden_size, 2 * self.num_layers * self.hidden_size
        if not self.prefix_projection:
            return {"embedding.weight": (p, out)}
        return {
            "embedding.weight": (p, h),
            "trans.0.weight": (h, h),
            "trans.0.bias": (h,),
            "trans.2.weight": (out, h),
            "trans.2.bias": (out,),
        }


def read_ptuning_config(path: Path, base: ChatGLMConfig) -> PtuningConfig:
    """The recipe's config.json: pre_seq_len, prefix_projection; sizes checked against base."""
    data = read_json_object(path, "a P-Tuning v2 checkpoint has a config.json")
    p = positive_int(data, "pre_seq_len", path, ": not a P-Tuning v2 checkpoint")
    projection = data.get("prefix_projection", False)  # THUDM's config default
    if not isinstance(projection, bool):
        raise AdapterError(f"{path}: field 'prefix_projection' must be true or false")
    for field in ("num_layers", "hidden_size", "num_attention_heads"):
        if field in data and data[field] != getattr(base, field):
            raise AdapterError(
                f"{path}: field {field!r} is {data[field]!r} but the base model has "
                f"{getattr(base, field)}: this prefix was trained for another model"
            )
    return PtuningConfig(p, projection, base.num_layers, base.hidden_size, base.num_attention_heads)


def load_prefix_encoder(
    ptuning_dir: Path, pc: PtuningConfig, progress: bool = False
) -> dict[str, torch.Tensor]:
    """The ``transformer.prefix_encoder.*`` tensors (short names), checked against ``pc``.

    Other tensors in the files are ignored, as the recipe's own loader ignores them.
    """
    try:
        source = find_source(ptuning_dir)
    except CheckpointError as e:
        raise AdapterError(str(e)) from None
    shapes = pc.encoder_shapes()
    found: dict[str, torch.Tensor] = {}
    where: dict[str, Path] = {}
    shards = [p for p, names in source.shards.items() if names is None or _has_prefix(names)]
    for path in tqdm(shards, unit="file", desc="p-tuning", disable=not progress):
        for full, t in iter_shard(path):
            if not full.startswith(PREFIX_ENCODER):
                continue
            short = full[len(PREFIX_ENCODER) :]
            if short not in shapes:
                hint = _projection_hint(short, pc)
                raise AdapterError(f"{path}: unexpected tensor {full!r}{hint}")
            if t.dtype not in FLOAT_DTYPES:
                raise AdapterError(f"{path}: tensor {full!r} has dtype {t.dtype}, expected float")
            if tuple(t.shape) != shapes[short]:
                raise AdapterError(
                    f"{path}: tensor {full!r} has shape {list(t.shape)}, expected "
                    f"{list(shapes[short])} (pre_seq_len={pc.pre_seq_len}, "
                    f"num_layers={pc.num_layers}, hidden_size={pc.hidden_size} of the base; "
                    f"prefix_projection={str(pc.prefix_projection).lower()})"
                )
            found[short] = t.float().clone()
            where[short] = path
    if not found:
        raise AdapterError(
            f"{ptuning_dir}: no {PREFIX_ENCODER}* tensors: not a P-Tuning v2 checkpoint of "
            "THUDM's ptuning/ recipe"
        )
    missing = [n for n in shapes if n not in found]
    if missing:
        raise AdapterError(
            f"{ptuning_dir}: missing tensor(s) {', '.join(PREFIX_ENCODER + n for n in missing)} "
            f"(config.json says prefix_projection={str(pc.prefix_projection).lower()})"
        )
    return found


def _has_prefix(names: list[str]) -> bool:
    return any(n.startswith(PREFIX_ENCODER) for n in names)


def _projection_hint(short: str, pc: PtuningConfig) -> str:
    if short in PROJECTION_NAMES and not pc.prefix_projection:
        return " (config.json says prefix_projection=false but the encoder has a projection)"
    return ""


def encode_prefix(encoder: dict[str, torch.Tensor], pc: PtuningConfig) -> PrefixKV:
    """Runs THUDM's PrefixEncoder on 0..P-1 in fp32 and splits the output per layer into K, V.

    Dropout (get_prompt's, p=0.1) is a training-only op and is not applied.
    """
    idx = torch.arange(pc.pre_seq_len)
    out = F.embedding(idx, encoder["embedding.weight"].float())
    if pc.prefix_projection:
        hidden = torch.tanh(
            F.linear(out, encoder["trans.0.weight"].float(), encoder["trans.0.bias"].float())
        )
        out = F.linear(hidden, encoder["trans.2.weight"].float(), encoder["trans.2.bias"].float())
    # THUDM: view(P, 2L, heads, head_dim), layer i takes slots 2i (key) and 2i + 1 (value).
    kv = out.view(pc.pre_seq_len, pc.num_layers, 2, pc.hidden_size)
    key = kv[:, :, 0].transpose(0, 1).contiguous()
    value = kv[:, :, 1].transpose(0, 1).contiguous()
    return PrefixKV(key, value)


def base_config(base: str | os.PathLike) -> ChatGLMConfig:
    """The converted checkpoint's config (refuses a hub-style or missing directory)."""
    d = Path(base)
    try:
        cfg = ChatGLMConfig.from_json(d / "config.json")
    except ConfigError as e:
        raise AdapterError(f"--base: {e}") from None
    if cfg.glmserve_format is None:
        raise AdapterError(
            f"{d / 'config.json'}: no 'glmserve_format': --base must be a converted checkpoint "
            "(python -m glmserve.convert --src HUB_DIR --out OUT)"
        )
    return cfg


def add_ptuning_adapter(
    ptuning_dir: str | os.PathLike,
    base: str | os.PathLike,
    name: str,
    force: bool = False,
    progress: bool = True,
) -> Path:
    """Computes the prefix of a P-Tuning v2 checkpoint and writes ``base/adapters/name/``."""
    src = Path(ptuning_dir)
    if not src.is_dir():
        raise AdapterError(f"{src}: P-Tuning v2 checkpoint directory not found")
    cfg = base_config(base)
    check_can_write(base, name, force)  # the name, and no overwrite, before any work
    pc = read_ptuning_config(src / "config.json", cfg)
    encoder = load_prefix_encoder(src, pc, progress)
    prefix = encode_prefix(encoder, pc)
    source = f"p-tuning v2 {src.resolve()} (prefix_projection={str(pc.prefix_projection).lower()})"
    return write_prefix_adapter(base, name, prefix, cfg, source, force)
