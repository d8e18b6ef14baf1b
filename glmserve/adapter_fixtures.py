"""Random customized-model checkpoints in the exact on-disk formats of their tools (tests, demos).

- ``write_ptuning_checkpoint``: what THUDM's ``ptuning/`` recipe saves (``save_pretrained``
  with only the trainable parameters): ``config.json`` with ``pre_seq_len`` and
  ``prefix_projection``, and ``pytorch_model.bin`` (or ``model.safetensors``) holding
  ``transformer.prefix_encoder.embedding.weight`` [P, 2*L*H] (no projection), or
  ``embedding.weight`` [P, H] + ``trans.0.{weight [H, H], bias [H]}`` +
  ``trans.2.{weight [2*L*H, H], bias [2*L*H]}`` (projection), all fp32 (the recipe trains
  the encoder in fp32).
- ``write_lora_adapter``: what peft's ``save_pretrained`` writes for a LoRA on
  ChatGLM-6B: ``adapter_config.json`` and ``adapter_model.safetensors`` (``.bin`` for old
  peft) with ``base_model.model.transformer.layers.{i}.{module}.lora_A.weight`` [r, in]
  and ``lora_B.weight`` [out, r].
- ``write_full_finetune``: a full fine-tune as ``save_pretrained`` shards it
  (``pytorch_model-0000k-of-0000n.bin`` + ``pytorch_model.bin.index.json``).

    python -m glmserve.adapter_fixtures --base-hub models/chatglm-tiny/hub --out DIR

writes one of each for the tiny demo model into DIR (ptuning, ptuning-proj, lora-qkv,
lora-all, full-finetune).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import torch

from glmserve._checkpoint import LAYER_LINEARS, expected_shapes, iter_shard
from glmserve.config import ChatGLMConfig

# peft's target_modules names -> the hub module paths inside a layer.
LORA_TARGETS = {lin.split(".")[-1]: lin for lin in LAYER_LINEARS}
PREFIX_STD = 1.0  # prefix K/V entries ~ the size of the tiny model's own K/V


def _hub_config(cfg: ChatGLMConfig, **extra: object) -> dict[str, object]:
    """A config.json as transformers' save_pretrained writes it for THUDM's model class."""
    fields = {
        k: v for k, v in cfg.to_dict().items() if k not in ("glmserve_format", "quantization")
    }
    return {
        "_name_or_path": "THUDM/chatglm-6b",
        "architectures": ["ChatGLMForConditionalGeneration"],
        "auto_map": {
            "AutoConfig": "configuration_chatglm.ChatGLMConfig",
            "AutoModel": "modeling_chatglm.ChatGLMForConditionalGeneration",
        },
        "model_type": "chatglm",
        **fields,
        "torch_dtype": "float16",
        "transformers_version": "4.27.1",
        "use_cache": True,
        "quantization_bit": 0,
        **extra,
    }


def _save(tensors: dict[str, torch.Tensor], path: Path) -> None:
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), {"format": "pt"})
    else:
        torch.save(tensors, path)


# ----------------------------------------------------------------- P-Tuning v2
def random_prefix_encoder(
    cfg: ChatGLMConfig, pre_seq_len: int, prefix_projection: bool, seed: int = 0
) -> dict[str, torch.Tensor]:
    """THUDM PrefixEncoder parameters (full names), random, fp32, scaled to matter."""
    gen = torch.Generator().manual_seed(seed)
    h, out = cfg.hidden_size, 2 * cfg.num_layers * cfg.hidden_size

    def normal(*shape: int, std: float) -> torch.Tensor:
        return torch.randn(shape, generator=gen) * std

    p = "transformer.prefix_encoder."
    if not prefix_projection:
        return {p + "embedding.weight": normal(pre_seq_len, out, std=PREFIX_STD)}
    return {
        p + "embedding.weight": normal(pre_seq_len, h, std=1.0),
        p + "trans.0.weight": normal(h, h, std=2.0 / h**0.5),
        p + "trans.0.bias": normal(h, std=0.1),
        p + "trans.2.weight": normal(out, h, std=PREFIX_STD * 1.5 / h**0.5),
        p + "trans.2.bias": normal(out, std=0.1),
    }


def write_ptuning_checkpoint(
    out: str | Path,
    cfg: ChatGLMConfig,
    pre_seq_len: int = 8,
    prefix_projection: bool = False,
    seed: int = 0,
    weights_file: str = "pytorch_model.bin",
) -> Path:
    """A P-Tuning v2 checkpoint directory as the official recipe saves it; returns ``out``."""
    d = Path(out)
    d.mkdir(parents=True, exist_ok=True)
    conf = _hub_config(cfg, pre_seq_len=pre_seq_len, prefix_projection=prefix_projection)
    (d / "config.json").write_text(json.dumps(conf, indent=2) + "\n")
    _save(random_prefix_encoder(cfg, pre_seq_len, prefix_projection, seed), d / weights_file)
    return d


# ------------------------------------------------------------------------ LoRA
def random_lora(
    cfg: ChatGLMConfig,
    r: int,
    targets: tuple[str, ...] = ("query_key_value",),
    seed: int = 0,
    layers: list[int] | None = None,
) -> dict[str, torch.Tensor]:
    """peft-named lora_A [r, in] / lora_B [out, r] tensors (B is nonzero, unlike peft's init)."""
    gen = torch.Generator().manual_seed(seed)
    shapes = expected_shapes(cfg)
    tensors: dict[str, torch.Tensor] = {}
    for i in layers if layers is not None else range(cfg.num_layers):
        for target in targets:
            module = f"transformer.layers.{i}.{LORA_TARGETS[target]}"
            out_f, in_f = shapes[module + ".weight"]
            prefix = f"base_model.model.{module}."
            tensors[prefix + "lora_A.weight"] = torch.randn((r, in_f), generator=gen) / in_f**0.5
            tensors[prefix + "lora_B.weight"] = torch.randn((out_f, r), generator=gen) * 0.05
    return tensors


def lora_config(
    r: int, lora_alpha: float, targets: tuple[str, ...], old_peft: bool = False, **extra: object
) -> dict[str, object]:
    """adapter_config.json as peft writes it (recent peft; ``old_peft``: peft 0.2/0.3 fields)."""
    common: dict[str, object] = {
        "base_model_name_or_path": "THUDM/chatglm-6b",
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
        "lora_alpha": lora_alpha,
        "lora_dropout": 0.1,
        "modules_to_save": None,
        "peft_type": "LORA",
        "r": r,
        "target_modules": list(targets),
        "task_type": "CAUSAL_LM",
    }
    if old_peft:
        common.update(enable_lora=None, merge_weights=False)
    else:
        common.update(
            alpha_pattern={},
            auto_mapping=None,
            init_lora_weights=True,
            layer_replication=None,
            layers_pattern=None,
            layers_to_transform=None,
            loftq_config={},
            megatron_config=None,
            megatron_core="megatron.core",
            rank_pattern={},
            revision=None,
            use_dora=False,
            use_rslora=False,
        )
    common.update(extra)
    return dict(sorted(common.items()))


def write_lora_adapter(
    out: str | Path,
    cfg: ChatGLMConfig,
    r: int = 4,
    lora_alpha: float = 8,
    targets: tuple[str, ...] = ("query_key_value",),
    seed: int = 0,
    old_peft: bool = False,
    **config_extra: object,
) -> Path:
    """A peft LoRA adapter directory (``.bin`` weights when ``old_peft``); returns ``out``."""
    d = Path(out)
    d.mkdir(parents=True, exist_ok=True)
    conf = lora_config(r, lora_alpha, targets, old_peft, **config_extra)
    (d / "adapter_config.json").write_text(json.dumps(conf, indent=2) + "\n")
    name = "adapter_model.bin" if old_peft else "adapter_model.safetensors"
    _save(random_lora(cfg, r, targets, seed), d / name)
    return d


# ------------------------------------------------------------- full fine-tune
def write_full_finetune(
    out: str | Path, base_hub: str | Path, seed: int = 0, shards: int = 2, std: float = 0.02
) -> Path:
    """The base's weights moved by N(0, std * |w|) noise, saved as sharded .bin + index."""
    src, d = Path(base_hub), Path(out)
    d.mkdir(parents=True, exist_ok=True)
    cfg = ChatGLMConfig.from_json(src / "config.json")
    conf = _hub_config(cfg, pre_seq_len=None, prefix_projection=False)
    conf["torch_dtype"] = "float32"
    (d / "config.json").write_text(json.dumps(conf, indent=2) + "\n")
    if (src / "ice_text.model").is_file():
        shutil.copyfile(src / "ice_text.model", d / "ice_text.model")
    gen = torch.Generator().manual_seed(seed)
    sd = {}
    for path in sorted(src.glob("*.safetensors")) or sorted(src.glob("pytorch_model*.bin")):
        for name, t in iter_shard(path):
            t = t.float()
            sd[name] = t + torch.randn(t.shape, generator=gen) * std * t.abs().mean()
    names = list(sd)
    weight_map = {}
    for k in range(shards):
        fname = f"pytorch_model-{k + 1:05d}-of-{shards:05d}.bin"
        torch.save({n: sd[n] for n in names[k::shards]}, d / fname)
        weight_map.update({n: fname for n in names[k::shards]})
    index = {"metadata": {"total_size": sum(t.numel() * 4 for t in sd.values())}}
    index["weight_map"] = dict(sorted(weight_map.items()))
    (d / "pytorch_model.bin.index.json").write_text(json.dumps(index, indent=2) + "\n")
    return d


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m glmserve.adapter_fixtures",
        description="Write random P-Tuning v2, LoRA and full fine-tune checkpoints (in their "
        "tools' formats) for a hub-style base model, e.g. the tiny demo model.",
    )
    p.add_argument("--base-hub", required=True, help="hub-style base, e.g. models/chatglm-tiny/hub")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--pre-seq-len", type=int, default=8, help="prefix length (default 8)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    args = p.parse_args(argv)
    cfg = ChatGLMConfig.from_json(Path(args.base_hub) / "config.json")
    out = Path(args.out)
    write_ptuning_checkpoint(out / "ptuning", cfg, args.pre_seq_len, False, args.seed)
    write_ptuning_checkpoint(out / "ptuning-proj", cfg, args.pre_seq_len, True, args.seed + 1)
    write_lora_adapter(out / "lora-qkv", cfg, seed=args.seed + 2)
    write_lora_adapter(out / "lora-all", cfg, targets=tuple(LORA_TARGETS), seed=args.seed + 3)
    write_full_finetune(out / "full-finetune", args.base_hub, seed=args.seed + 4)
    print(
        f"adapter_fixtures: wrote ptuning, ptuning-proj, lora-qkv, lora-all, full-finetune in {out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
