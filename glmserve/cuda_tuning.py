"""The engine's CUDA tuning options as command-line flags (``chatglm-generate``,
``glmserve.bench``, ``glmserve.bench_int8``).

The options themselves are ``glm::CudaTuning`` (``EngineOptions.cuda`` in
``backend_src/engine/engine.h``: names, defaults, ranges, validation). This module only
lists what the built engine module reports (``glmserve._engine.cuda_tuning_fields()``)
as flags ``--cuda-<name> VALUE`` and hands the ones given to ``_engine.Engine`` as
keywords ``cuda_<name>=VALUE``; a flag left out keeps the engine's default. Without a
built engine module there are no such flags (nothing could use them).
"""

from __future__ import annotations

import argparse
import importlib
from typing import Any

PREFIX = "cuda_"


def fields() -> list[dict[str, Any]]:
    """The engine's tuning fields (name, type 'bool' or 'int', default, min, max, choices,
    help); empty when glmserve._engine is not built."""
    try:
        # torch first when it is there: its CUDA libraries must be loaded before the
        # engine's in one process (the engine module first, then torch, crashed the
        # benchmark at start on an H100, 2026-12-07).
        importlib.import_module("torch")
    except ImportError:
        pass
    try:
        _engine = importlib.import_module("glmserve._engine")
    except ImportError:
        return []
    return list(getattr(_engine, "cuda_tuning_fields", list)())


def parse_bool(text: str) -> bool:
    """The engine's spellings of a flag value: true/false, 1/0, yes/no, on/off."""
    v = text.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def add_flags(parser: argparse.ArgumentParser) -> None:
    """Adds ``--cuda-<name> VALUE`` for every tuning field (default: the engine's)."""
    found = fields()
    if not found:
        return
    group = parser.add_argument_group(
        "CUDA tuning (EngineOptions.cuda; docs/cuda_notes.md). Left out: the engine's default"
    )
    for f in found:
        is_bool = f["type"] == "bool"
        default = str(f["default"]).lower() if is_bool else f["default"]
        group.add_argument(
            "--cuda-" + f["name"].replace("_", "-"),
            dest=PREFIX + f["name"],
            type=parse_bool if is_bool else int,
            choices=f.get("choices") or None,
            default=None,
            metavar="BOOL" if is_bool else "N",
            help=f"{f['help']} (default {default})",
        )


def kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The tuning flags given on the command line, as ``_engine.Engine`` keywords."""
    return {k: v for k, v in vars(args).items() if k.startswith(PREFIX) and v is not None}


def parse_setting(spec: str) -> tuple[str, str]:
    """``cuda_<name>=VALUE`` (an A/B variant of glmserve.bench) -> (keyword, value); the
    engine validates both when it is created."""
    key, sep, value = spec.partition("=")
    key = key.strip()
    if not sep or not key.startswith(PREFIX) or not value.strip():
        names = ", ".join(PREFIX + f["name"] for f in fields()) or "see cuda_tuning_fields()"
        raise argparse.ArgumentTypeError(
            f"expected cuda_<name>=VALUE, an engine tuning option ({names}), got {spec!r}"
        )
    return key, value.strip()


def parse_variant(spec: str) -> dict[str, str]:
    """One A/B variant of glmserve.bench: ``cuda_<name>=VALUE`` settings joined by commas
    (e.g. ``cuda_gemv_max_tokens=2,cuda_gemv_mma_max_tokens=16``) -> {keyword: value}."""
    out: dict[str, str] = {}
    for part in spec.split(","):
        key, value = parse_setting(part)
        if key in out:
            raise argparse.ArgumentTypeError(f"{key} set twice in the variant {spec!r}")
        out[key] = value
    return out
