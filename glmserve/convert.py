"""Converts a hub-style ChatGLM-6B directory into the engine's checkpoint format.

    python -m glmserve.convert --src HUBDIR --out DIR [--lora PEFT_DIR] [--dtype fp16|fp32]
                               [--int8] [--int8-lm-head] [--fp8]
    python -m glmserve.convert --ptuning PTUNING_DIR --base DIR --adapter-name NAME [--force]

The first form converts a base model or a full fine-tune (both are hub-style
directories), merging a peft LoRA adapter into the weights when ``--lora`` is given
(glmserve/lora.py: ``W + B @ A * scale`` in fp32, then the cast or the int8
quantization). The second adds a P-Tuning v2 prefix (THUDM's ``ptuning/`` recipe) to
the converted checkpoint DIR as ``DIR/adapters/NAME/`` (glmserve/ptuning.py,
docs/adapters.md).

Input: ``config.json`` plus ``*.safetensors`` (preferred when both exist) or
``pytorch_model-*.bin`` shards with ``pytorch_model.bin.index.json`` (or a single
``pytorch_model.bin``), loaded with ``weights_only=True`` and memory-mapped.
Output (docs/architecture.md): ``config.json`` (+ ``"glmserve_format": 1``), one
``model.safetensors`` with the hub tensor names, and ``ice_text.model`` when present,
with ``token_bytes.bin`` (the text of every id, glmserve/token_texts.py) beside it.

Memory stays bounded by one shard plus one tensor: the safetensors header is computed
from config.json first, then each tensor is written at its offset as its shard is read.

``--int8``: symmetric per-output-channel int8 for the four linear weights of every
layer (``w ~= q * scale``, ``scale = max|w_row| / 127`` rounded to fp16, ``q =
round(w / scale)`` clamped to [-127, 127], computed in fp32: deterministic), stored as
I8 ``X.weight`` plus F16 ``X.weight_scale`` [out]. ``--int8-lm-head`` adds lm_head.

``--fp8``: the same four linears as FP8 E4M3 with one fp32 scale per output channel
(glmserve.fp8.quantize_rows: ``scale = max|w_row| / 448``, codes nearest, ties to even),
stored as F8_E4M3 ``X.weight`` plus F32 ``X.weight_scale`` [out]; config.json gets
``"quantization": {"fp8": true}``. The lm_head stays float. Such a checkpoint runs on the
CUDA engine's fp8 mode (GPUs with FP8 tensor cores; docs/int8.md "FP8").
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path
from typing import NoReturn

import torch
from tqdm import tqdm

from glmserve import fp8
from glmserve._checkpoint import (
    CheckpointError,
    StreamingSafetensorsWriter,
    check_tensor,
    expected_shapes,
    find_source,
    is_ignored,
    iter_shard,
    quantized_names,
)
from glmserve.adapters import check_adapter_name
from glmserve.config import ChatGLMConfig, ConfigError
from glmserve.lora import load_lora_deltas
from glmserve.ptuning import PREFIX_ENCODER, add_ptuning_adapter
from glmserve.token_texts import write_token_texts

FORMAT_VERSION = 1
DTYPES = {"fp16": torch.float16, "fp32": torch.float32}
TORCH_DTYPE_NAMES = {torch.float16: "float16", torch.float32: "float32"}
TOKENIZER_FILE = "ice_text.model"


def quantize_int8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row int8: returns (q int8 [out, in], scale fp16 [out]) with w ~= q * scale."""
    w32 = w.float()
    amax = w32.abs().amax(dim=1)
    scale = (amax / 127.0).to(torch.float16)
    # A zero row (or one so small its scale underflows fp16) quantizes to zeros with scale 1.
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.round(w32 / scale.float()[:, None]).clamp_(-127, 127).to(torch.int8)
    return q, scale


def quantize_fp8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row E4M3 (glmserve.fp8.quantize_rows, the engine's rule): returns (codes as
    float8_e4m3fn [out, in], scale float32 [out]) with w ~= value(codes) * scale."""
    codes, scale = fp8.quantize_rows(w.float().numpy())
    return torch.from_numpy(codes).view(torch.float8_e4m3fn), torch.from_numpy(scale)


def default_dtype(cfg: ChatGLMConfig) -> str:
    """The source's dtype (config torch_dtype): float32 stays fp32, anything else becomes fp16."""
    return "fp32" if cfg.torch_dtype == "float32" else "fp16"


def _known_names(source_shards: dict[Path, list[str] | None]) -> dict[Path, list[str] | None]:
    """Fills in names of safetensors shards (cheap: header only); .bin without index stays None."""
    out: dict[Path, list[str] | None] = {}
    for path, names in source_shards.items():
        if names is None and path.suffix == ".safetensors":
            from safetensors import safe_open

            try:
                with safe_open(str(path), framework="pt") as f:
                    names = list(f.keys())
            except Exception as e:  # noqa: BLE001 - safetensors raises its own types
                raise CheckpointError(f"{path}: cannot read safetensors header: {e}") from None
        out[path] = names
    return out


def unknown_name_error(path: Path, name: str) -> CheckpointError:
    """The error for a tensor a base model does not have (with a hint for P-Tuning v2 ones)."""
    if name.startswith(PREFIX_ENCODER):
        return CheckpointError(
            f"{path}: {name!r} is a P-Tuning v2 prefix encoder tensor: convert the base model "
            "with --src, then add the prefix with --ptuning DIR --base OUT --adapter-name NAME"
        )
    return CheckpointError(f"{path}: unknown tensor name {name!r}")


def _precheck_names(
    shards: dict[Path, list[str] | None], shapes: dict[str, tuple[int, ...]]
) -> None:
    """Unknown / missing / duplicated names, before anything is written (when names are known)."""
    if any(names is None for names in shards.values()):
        return
    seen: dict[str, Path] = {}
    for path, names in shards.items():
        assert names is not None
        for name in names:
            if is_ignored(name):
                continue
            if name not in shapes:
                raise unknown_name_error(path, name)
            if name in seen:
                raise CheckpointError(f"tensor {name!r} is in both {seen[name]} and {path}")
            seen[name] = path
    missing = [n for n in shapes if n not in seen]
    if missing:
        shown = ", ".join(repr(n) for n in missing[:5])
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise CheckpointError(f"checkpoint is missing tensor(s) {shown}{more}")


def convert(
    src: str | os.PathLike,
    out: str | os.PathLike,
    dtype: str | None = None,
    int8: bool = False,
    int8_lm_head: bool = False,
    progress: bool = True,
    lora: str | os.PathLike | None = None,
    fp8: bool = False,
) -> Path:
    """Converts hub-style ``src`` into ``out``; returns ``out``. Raises CheckpointError/ConfigError.

    ``lora``: a peft LoRA adapter directory merged into the weights (glmserve.lora).
    """
    src_dir, out_dir = Path(src), Path(out)
    if not src_dir.is_dir():
        raise CheckpointError(f"{src_dir}: source checkpoint directory not found")
    if out_dir.exists() and out_dir.resolve() == src_dir.resolve():
        raise CheckpointError(f"--out {out_dir} must differ from --src")
    if int8_lm_head and not int8:
        raise ValueError("--int8-lm-head needs --int8")
    if fp8 and int8:
        raise ValueError("--fp8 and --int8 are two formats: choose one")
    cfg = ChatGLMConfig.from_json(src_dir / "config.json")
    dtype = dtype or default_dtype(cfg)
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    out_dtype = DTYPES[dtype]

    shapes = expected_shapes(cfg)
    quantized = set(quantized_names(cfg, int8_lm_head)) if int8 else set()
    fp8_names = set(quantized_names(cfg, False)) if fp8 else set()  # the lm_head stays float
    source = find_source(src_dir)
    shards = _known_names(source.shards)
    _precheck_names(shards, shapes)
    deltas = load_lora_deltas(lora, shapes, cfg) if lora is not None else {}

    specs: list[tuple[str, torch.dtype, tuple[int, ...]]] = []
    for name, shape in shapes.items():
        if name in quantized:
            specs.append((name, torch.int8, shape))
            specs.append((name + "_scale", torch.float16, shape[:1]))
        elif name in fp8_names:
            specs.append((name, torch.float8_e4m3fn, shape))
            specs.append((name + "_scale", torch.float32, shape[:1]))
        else:
            specs.append((name, out_dtype, shape))

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.json").unlink(missing_ok=True)  # a half-written dir never looks converted
    writer = StreamingSafetensorsWriter(
        out_dir / "model.safetensors", specs, metadata={"format": "pt", "glmserve_format": "1"}
    )
    try:
        bar = tqdm(total=len(shapes), unit="tensor", desc="convert", disable=not progress)
        for path in shards:
            bar.set_postfix_str(path.name)
            for name, t in iter_shard(path):
                if is_ignored(name):
                    continue
                if name not in shapes:
                    raise unknown_name_error(path, name)
                check_tensor(name, t, shapes[name], path)
                if name in deltas:  # LoRA: merged in fp32, then cast or quantized
                    t = t.float() + deltas[name]
                if name in quantized:
                    q, scale = quantize_int8(t)
                    writer.write(name, q)
                    writer.write(name + "_scale", scale)
                elif name in fp8_names:
                    q8, scale8 = quantize_fp8(t)
                    writer.write(name, q8)
                    writer.write(name + "_scale", scale8)
                else:
                    writer.write(name, t.to(out_dtype))
                del t
                bar.update(1)
        bar.close()
        writer.close()
    except BaseException:
        writer.abort()
        raise

    out_cfg = cfg.to_dict()
    out_cfg["torch_dtype"] = TORCH_DTYPE_NAMES[out_dtype]
    out_cfg["glmserve_format"] = FORMAT_VERSION
    out_cfg.pop("quantization", None)
    if int8:
        out_cfg["quantization"] = {"int8": True, "lm_head": bool(int8_lm_head)}
    if fp8:
        out_cfg["quantization"] = {"fp8": True}
    tok = src_dir / TOKENIZER_FILE
    if tok.is_file():
        shutil.copyfile(tok, out_dir / TOKENIZER_FILE)
        try:
            write_token_texts(tok, out_dir)  # the engine's stop strings match on these
        except (RuntimeError, ValueError) as e:
            raise CheckpointError(f"{tok}: not a sentencepiece model ({e})") from None
    tmp = out_dir / "config.json.partial"
    tmp.write_text(json.dumps(out_cfg, indent=2) + "\n")
    os.replace(tmp, out_dir / "config.json")
    return out_dir


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line instead of usage + error
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="python -m glmserve.convert",
        description="Convert a hub-style ChatGLM-6B checkpoint (base model or full fine-tune, "
        "optionally merging a peft LoRA adapter) into glmserve's format, or add a P-Tuning v2 "
        "prefix to a converted checkpoint as a named adapter.",
    )
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--src", help="hub-style checkpoint directory (base model or full fine-tune)")
    mode.add_argument(
        "--ptuning",
        metavar="PTUNING_DIR",
        help="P-Tuning v2 checkpoint of THUDM's ptuning/ recipe (config.json + pytorch_model.bin)",
    )
    conv = p.add_argument_group("converting a model (--src)")
    conv.add_argument("--out", help="output directory")
    conv.add_argument(
        "--lora", metavar="ADAPTER_DIR", help="peft LoRA adapter to merge into the weights"
    )
    conv.add_argument(
        "--dtype",
        choices=sorted(DTYPES),
        default=None,
        help="output float dtype (default: the source's, float32 -> fp32, else fp16)",
    )
    conv.add_argument("--int8", action="store_true", help="int8 weight-only layer linears")
    conv.add_argument(
        "--int8-lm-head", action="store_true", help="also quantize lm_head (needs --int8)"
    )
    conv.add_argument(
        "--fp8",
        action="store_true",
        help="FP8 E4M3 layer linears with per-channel fp32 scales (the CUDA engine's fp8 mode)",
    )
    pt = p.add_argument_group("adding a P-Tuning v2 prefix (--ptuning)")
    pt.add_argument("--base", metavar="OUT", help="the converted checkpoint to add the adapter to")
    pt.add_argument("--adapter-name", metavar="NAME", help="adapter name, [A-Za-z0-9_.-]{1,64}")
    pt.add_argument("--force", action="store_true", help="replace an existing adapter NAME")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def _check_mode(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Options of the other mode are errors (one line, exit code 2)."""
    if args.src is not None:
        if args.out is None:
            parser.error("--src needs --out")
        other = {"--base": args.base, "--adapter-name": args.adapter_name, "--force": args.force}
        if args.int8_lm_head and not args.int8:
            parser.error("--int8-lm-head needs --int8")
        if args.fp8 and args.int8:
            parser.error("--fp8 and --int8 are two formats: choose one")
    else:
        if args.base is None or args.adapter_name is None:
            parser.error("--ptuning needs --base OUT and --adapter-name NAME")
        other = {
            "--out": args.out,
            "--lora": args.lora,
            "--dtype": args.dtype,
            "--int8": args.int8,
            "--int8-lm-head": args.int8_lm_head,
            "--fp8": args.fp8,
        }
    wrong = [flag for flag, value in other.items() if value not in (None, False)]
    if wrong:
        parser.error(
            f"{', '.join(wrong)} cannot be used with {'--src' if args.src else '--ptuning'}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _check_mode(parser, args)
    try:
        if args.ptuning is not None:
            check_adapter_name(args.adapter_name)
            out = add_ptuning_adapter(
                args.ptuning, args.base, args.adapter_name, args.force, progress=not args.quiet
            )
        else:
            out = convert(
                args.src,
                args.out,
                args.dtype,
                args.int8,
                args.int8_lm_head,
                progress=not args.quiet,
                lora=args.lora,
                fp8=args.fp8,
            )
    except (CheckpointError, ConfigError, ValueError) as e:
        print(f"convert: error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 1
    print(f"convert: wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
