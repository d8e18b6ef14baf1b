"""Downloads THUDM/chatglm-6b (revision 8b7d335), verifies its tokenizer, converts it.

    python -m glmserve.hub --out models/chatglm-6b [--int8 [--int8-lm-head] | --fp8] [--dtype fp16|fp32]
    python -m glmserve.hub --out DIR --source LOCAL_HUB_DIR     # no download

The hub files go to ``OUT/hub/`` (huggingface_hub's ``snapshot_download`` with its
progress bars, resumable), ``ice_text.model``'s sha256 is checked, and the converted
checkpoint is written to ``OUT/``. Without network it fails within seconds with a
one-line message (a short reachability probe of the endpoint before any download).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from pathlib import Path

from glmserve._checkpoint import CheckpointError
from glmserve.config import ConfigError

REPO_ID = "THUDM/chatglm-6b"
REVISION = "8b7d335"
TOKENIZER_SHA256 = "5e974d9a69c242ce014c88c2b26089270f6198f3c0b700a887666cd3e816f17e"
ALLOW_PATTERNS = [
    "config.json",
    "ice_text.model",
    "tokenizer_config.json",
    "pytorch_model*.bin",
    "pytorch_model.bin.index.json",
    "*.safetensors",
    "model.safetensors.index.json",
]
PROBE_TIMEOUT_S = 5.0


class HubError(RuntimeError):
    """Download / verification failure with a one-line explanation."""


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify_tokenizer(hub_dir: Path, expected: str | None = None) -> None:
    """Checks ice_text.model's sha256 (default: THUDM's, TOKENIZER_SHA256)."""
    expected = expected or TOKENIZER_SHA256
    tok = hub_dir / "ice_text.model"
    if not tok.is_file():
        raise HubError(f"{tok} is missing")
    got = sha256_of(tok)
    if got != expected:
        raise HubError(f"{tok}: sha256 {got} does not match the expected {expected}")


def endpoint() -> str:
    """The hub endpoint huggingface_hub will use ($HF_ENDPOINT or https://huggingface.co)."""
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def probe(url: str, timeout: float = PROBE_TIMEOUT_S) -> None:
    """Raises HubError quickly when ``url`` cannot be reached (DNS, refused, timeout)."""
    import requests

    try:
        requests.head(url, timeout=timeout, allow_redirects=False)
    except requests.RequestException as e:
        reason = type(e).__name__
        raise HubError(
            f"cannot reach {url} ({reason}): no network? Download {REPO_ID} elsewhere and use "
            "--source DIR"
        ) from None


def resolve_revision(repo_id: str, revision: str) -> str:
    """The full commit sha of ``revision`` (a short sha is matched against the repo's commits)."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi(endpoint=endpoint())
    try:
        return api.model_info(repo_id, revision=revision).sha or revision
    except HfHubHTTPError:  # e.g. a short sha the API does not resolve: look it up below
        pass
    for commit in api.list_repo_commits(repo_id):
        if commit.commit_id.startswith(revision):
            return commit.commit_id
    raise HubError(f"revision {revision!r} not found in {repo_id}")


def download(hub_dir: Path, repo_id: str = REPO_ID, revision: str = REVISION) -> Path:
    """snapshot_download into ``hub_dir`` (progress bars from huggingface_hub)."""
    os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", "10")
    probe(endpoint())
    from huggingface_hub import snapshot_download

    try:
        sha = resolve_revision(repo_id, revision)
        print(f"hub: downloading {repo_id}@{sha[:12]} into {hub_dir}", file=sys.stderr)
        snapshot_download(
            repo_id,
            revision=sha,
            local_dir=str(hub_dir),
            allow_patterns=ALLOW_PATTERNS,
            etag_timeout=10,
        )
    except HubError:
        raise
    except Exception as e:  # noqa: BLE001 - network / hub errors of many types
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise HubError(
            f"download of {repo_id}@{revision} failed: {type(e).__name__}: {first}"
        ) from None
    return hub_dir


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m glmserve.hub",
        description=f"Download {REPO_ID} at revision {REVISION} (or use --source), verify "
        "ice_text.model, convert into OUT.",
    )
    p.add_argument("--out", required=True, help="output directory (hub files go to OUT/hub)")
    p.add_argument("--source", help="local hub-style directory to convert instead of downloading")
    p.add_argument(
        "--verify-tokenizer",
        action="store_true",
        help="with --source: also check ice_text.model's sha256 (always checked on download)",
    )
    p.add_argument("--revision", default=REVISION, help=f"hub revision (default {REVISION})")
    p.add_argument("--dtype", choices=["fp16", "fp32"], default=None, help="output dtype")
    p.add_argument("--int8", action="store_true", help="int8 weight-only layer linears")
    p.add_argument("--int8-lm-head", action="store_true", help="also quantize lm_head")
    p.add_argument(
        "--fp8", action="store_true", help="FP8 E4M3 layer linears (the CUDA engine's fp8 mode)"
    )
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.int8_lm_head and not args.int8:
        parser.error("--int8-lm-head needs --int8")
    if args.fp8 and args.int8:
        parser.error("--fp8 and --int8 are two formats: choose one")
    from glmserve.convert import convert

    out = Path(args.out)
    try:
        if args.source:
            hub_dir = Path(args.source)
            if not hub_dir.is_dir():
                raise HubError(f"--source {hub_dir}: directory not found")
            if args.verify_tokenizer:
                verify_tokenizer(hub_dir)
        else:
            hub_dir = download(out / "hub", revision=args.revision)
            verify_tokenizer(hub_dir)
        convert(
            hub_dir,
            out,
            dtype=args.dtype,
            int8=args.int8,
            int8_lm_head=args.int8_lm_head,
            fp8=args.fp8,
        )
    except (HubError, CheckpointError, ConfigError, ValueError) as e:
        print(f"hub: error: {e}", file=sys.stderr)
        return 1
    print(f"hub: converted checkpoint in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
