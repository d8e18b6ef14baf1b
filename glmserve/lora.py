"""peft LoRA adapters for ChatGLM-6B, merged into the base weights by the converter.

A peft adapter directory holds ``adapter_config.json`` (``peft_type: "LORA"``, ``r``,
``lora_alpha``, ``target_modules``, ...) and ``adapter_model.safetensors`` (or
``adapter_model.bin``) with, per adapted linear layer,

    base_model.model.transformer.layers.{i}.{module}.lora_A.weight   [r, in_features]
    base_model.model.transformer.layers.{i}.{module}.lora_B.weight   [out_features, r]

where module is one of ``attention.query_key_value``, ``attention.dense``,
``mlp.dense_h_to_4h``, ``mlp.dense_4h_to_h``. The merged weight is
``W + (B @ A) * scale`` with ``scale = lora_alpha / r`` (``lora_alpha / sqrt(r)`` when
``use_rslora``), computed in fp32; the converter casts (or int8-quantizes) afterwards.

Features that change more than those four weights (trained biases, ``modules_to_save``,
DoRA, per-module ``alpha_pattern``, the legacy ``enable_lora`` MergedLinear) are refused
with a clear error: merge such adapters with peft's ``merge_and_unload()``, save the
model, and convert it as a full fine-tune.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from glmserve._checkpoint import FLOAT_DTYPES, LAYER_LINEARS, iter_shard
from glmserve.adapters import AdapterError, positive_int, read_json_object
from glmserve.config import ChatGLMConfig

CONFIG_FILE = "adapter_config.json"
WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")
PEFT_PREFIX = "base_model.model."
_LORA_NAME = re.compile(
    r"base_model\.model\.(transformer\.layers\.(\d+)\.([a-z_.0-9]+?))\.lora_([AB])(?:\.default)?\.weight"
)
# Config fields whose non-default values we cannot merge into the four weights.
_REFUSED: dict[str, tuple[object, ...]] = {
    "bias": ("none",),
    "use_dora": (False, None),
    "fan_in_fan_out": (False, None),
    "modules_to_save": (None, []),
    "alpha_pattern": (None, {}),
    "enable_lora": (None,),
    "layer_replication": (None,),
}


@dataclass(frozen=True)
class LoraConfig:
    r: int
    lora_alpha: float
    use_rslora: bool
    rank_pattern: bool  # True when per-module ranks are allowed (peft's rank_pattern)

    def scale(self, rank: int) -> float:
        return self.lora_alpha / (math.sqrt(rank) if self.use_rslora else rank)


def read_lora_config(path: Path) -> LoraConfig:
    data = read_json_object(path, f"a peft LoRA adapter has {CONFIG_FILE}")
    kind = data.get("peft_type")
    if kind != "LORA":
        raise AdapterError(
            f"{path}: field 'peft_type' is {kind!r}: only peft LoRA adapters ('LORA') can be "
            "merged (P-Tuning v2 checkpoints of THUDM's recipe go through --ptuning)"
        )
    r, alpha = positive_int(data, "r", path), data.get("lora_alpha")
    if isinstance(alpha, bool) or not isinstance(alpha, int | float) or alpha <= 0:
        raise AdapterError(f"{path}: field 'lora_alpha' must be a number > 0, got {alpha!r}")
    for field, accepted in _REFUSED.items():
        if field in data and data[field] not in accepted:
            raise AdapterError(
                f"{path}: field {field!r} = {data[field]!r} is not supported (only "
                f"{accepted[0]!r}); merge with peft's merge_and_unload() and convert the "
                "result as a full fine-tune"
            )
    rslora = data.get("use_rslora", False)
    if not isinstance(rslora, bool):
        raise AdapterError(f"{path}: field 'use_rslora' must be true or false")
    return LoraConfig(r, float(alpha), rslora, bool(data.get("rank_pattern")))


def find_weights(adapter_dir: Path) -> Path:
    for name in WEIGHT_FILES:
        if (adapter_dir / name).is_file():
            return adapter_dir / name
    raise AdapterError(f"{adapter_dir}: no {' or '.join(WEIGHT_FILES)} (a peft LoRA adapter)")


def load_lora_deltas(
    adapter_dir: str | os.PathLike, shapes: dict[str, tuple[int, ...]], cfg: ChatGLMConfig
) -> dict[str, torch.Tensor]:
    """``{hub weight name: (B @ A) * scale}`` in fp32, checked against the base's ``shapes``."""
    d = Path(adapter_dir)
    if not d.is_dir():
        raise AdapterError(f"{d}: LoRA adapter directory not found")
    lc = read_lora_config(d / CONFIG_FILE)
    path = find_weights(d)
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for name, t in iter_shard(path):
        module, ab = _parse_name(name, path, cfg)
        if t.dtype not in FLOAT_DTYPES or t.dim() != 2:
            raise AdapterError(
                f"{path}: tensor {name!r} must be a 2-D float matrix, got {t.dtype} {list(t.shape)}"
            )
        pairs.setdefault(module, {})[ab] = t.float().clone()
    if not pairs:
        raise AdapterError(f"{path}: no LoRA tensors (...lora_A.weight / ...lora_B.weight)")
    deltas: dict[str, torch.Tensor] = {}
    for module, ab in pairs.items():
        weight = module + ".weight"
        for part in "AB":
            if part not in ab:
                raise AdapterError(f"{path}: {PEFT_PREFIX}{module}.lora_{part}.weight is missing")
        a, b = ab["A"], ab["B"]
        out_f, in_f = shapes[weight]
        rank = a.shape[0]
        if a.shape[1] != in_f or b.shape[0] != out_f or b.shape[1] != rank:
            raise AdapterError(
                f"{path}: {module}: lora_A {list(a.shape)} / lora_B {list(b.shape)} do not fit "
                f"the base weight [{out_f}, {in_f}] (want lora_A [r, {in_f}], lora_B "
                f"[{out_f}, r]): an adapter for another model size?"
            )
        if rank != lc.r and not lc.rank_pattern:
            raise AdapterError(
                f"{path}: {module}: rank {rank} (lora_A rows) differs from field 'r' = {lc.r} "
                f"of {CONFIG_FILE}"
            )
        deltas[weight] = (b @ a) * lc.scale(rank)
    return deltas


def _parse_name(name: str, path: Path, cfg: ChatGLMConfig) -> tuple[str, str]:
    """(hub module path, "A" or "B") of a peft LoRA tensor name, or a clear error."""
    m = _LORA_NAME.fullmatch(name)
    if m is None:
        raise AdapterError(
            f"{path}: unexpected tensor {name!r} (expected {PEFT_PREFIX}transformer.layers.N."
            "<module>.lora_A.weight / lora_B.weight)"
        )
    module, layer, linear, ab = m.group(1), int(m.group(2)), m.group(3), m.group(4)
    if linear not in LAYER_LINEARS:
        raise AdapterError(
            f"{path}: tensor {name!r} adapts {linear!r}; supported target modules: "
            + ", ".join(x.split(".")[-1] for x in LAYER_LINEARS)
        )
    if layer >= cfg.num_layers:
        raise AdapterError(
            f"{path}: tensor {name!r} is for layer {layer} but the base model has "
            f"num_layers {cfg.num_layers}"
        )
    return module, ab
