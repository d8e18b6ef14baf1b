"""A config-only checkpoint: config.json plus an empty safetensors file.

Served with ``--backend-config=chatglm,random_weights=true`` (the engine makes random
weights of the config's shapes and never reads the file; ``scripts/serve.sh`` only checks
that it exists). Used by the GPU scripts to serve ChatGLM-6B's shapes without the 13 GB
download::

    python -m glmserve.config_only build/soak-6b                 # glmserve.config.REAL_CONFIG
    python -m glmserve.config_only out/ --config models/chatglm-tiny/config.json
"""

from __future__ import annotations

import argparse
import json
import struct
from pathlib import Path

from glmserve.config import REAL_CONFIG

# safetensors: an 8-byte little-endian header length, then the JSON header ("{}": no tensors)
EMPTY_SAFETENSORS = struct.pack("<Q", 2) + b"{}"


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
    args = p.parse_args(argv)
    write(args.out, json.loads(args.config.read_text()) if args.config else None)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
