"""A config-only checkpoint: config.json plus an empty safetensors file.

Served with ``--backend-config=chatglm,random_weights=true`` (the engine makes random
weights of the config's shapes and never reads the file; ``scripts/serve.sh`` only checks
that it exists). Used by the GPU scripts to serve ChatGLM-6B's shapes without the 13 GB
download::

    python -m glmserve.config_only build/soak-6b                 # glmserve.config.REAL_CONFIG
    python -m glmserve.config_only out/ --config models/chatglm-tiny/config.json
    # ChatGLM-6B's shapes, served with the demo tokenizer: its special ids in the config
    python -m glmserve.config_only out/ --special-ids-from models/chatglm-tiny/config.json
"""

from __future__ import annotations

import argparse
import json
import struct
from pathlib import Path

from glmserve.config import REAL_CONFIG

# safetensors: an 8-byte little-endian header length, then the JSON header ("{}": no tensors)
EMPTY_SAFETENSORS = struct.pack("<Q", 2) + b"{}"
# The ids a tokenizer decides; the rest of the config gives the shapes.
SPECIAL_IDS = ("bos_token_id", "eos_token_id", "mask_token_id", "gmask_token_id", "pad_token_id")


def write(out: Path, config: dict | None = None) -> Path:
    """Writes `out`/config.json (`config`, default ChatGLM-6B's) and an empty model.safetensors."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(config or REAL_CONFIG, indent=2))
    (out / "model.safetensors").write_bytes(EMPTY_SAFETENSORS)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path, help="checkpoint directory to write")
    p.add_argument("--config", type=Path, help="config.json to use instead of ChatGLM-6B's")
    p.add_argument(
        "--special-ids-from",
        type=Path,
        metavar="CONFIG",
        help="take the special token ids (bos, eos, mask, gmask, pad) from this config.json, "
        "e.g. the demo model's, to serve these shapes with its tokenizer",
    )
    args = p.parse_args(argv)
    config = dict(json.loads(args.config.read_text()) if args.config else REAL_CONFIG)
    if args.special_ids_from:
        ids = json.loads(args.special_ids_from.read_text())
        missing = [k for k in SPECIAL_IDS if k not in ids]
        if missing:
            p.error(f"--special-ids-from {args.special_ids_from}: no {', '.join(missing)}")
        config.update({k: ids[k] for k in SPECIAL_IDS})
    write(args.out, config)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
