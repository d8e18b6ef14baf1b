"""Adapters of a converted checkpoint: ``OUT/adapters/<NAME>/`` (docs/adapters.md).

Format 1 has one adapter type, ``"prefix"`` (a P-Tuning v2 prefix, precomputed):

- ``adapter.json``: ``{"glmserve_adapter_format": 1, "type": "prefix", "pre_seq_len": P,
  "num_layers": L, "hidden_size": H, "num_attention_heads": A, "source": "..."}``;
- ``prefix.safetensors``: F32 ``prefix.key`` and ``prefix.value``, each ``[L, P, H]``. Row
  ``[i, p]`` is layer i's key (value) of prefix position p, laid out as the model's own
  K/V after the QKV split: ``[heads, head_dim]`` flattened (head-major), no rotary.

The prefix is computed once by the converter (``glmserve.ptuning``); serving only reads it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from glmserve._checkpoint import CheckpointError
from glmserve.config import ChatGLMConfig

ADAPTER_FORMAT = 1
ADAPTERS_DIR = "adapters"
ADAPTER_JSON = "adapter.json"
PREFIX_FILE = "prefix.safetensors"
PREFIX_KEY = "prefix.key"
PREFIX_VALUE = "prefix.value"
ADAPTER_TYPES = ("prefix",)
NAME_PATTERN = r"[A-Za-z0-9_.-]{1,64}"
_NAME_RE = re.compile(NAME_PATTERN)
_SIZE_FIELDS = ("num_layers", "hidden_size", "num_attention_heads")


class AdapterError(CheckpointError):
    """An adapter that cannot be read, written or used; the message names file and field."""


def check_adapter_name(name: str) -> str:
    """Returns ``name`` if it is a valid adapter name ([A-Za-z0-9_.-]{1,64}, not . or ..)."""
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name) or name in (".", ".."):
        raise AdapterError(
            f"bad adapter name {name!r}: use 1 to 64 characters of A-Z a-z 0-9 _ . - "
            "(and not '.' or '..')"
        )
    return name


def adapter_dir(base: str | os.PathLike, name: str) -> Path:
    return Path(base) / ADAPTERS_DIR / check_adapter_name(name)


def list_adapters(base: str | os.PathLike) -> list[str]:
    """Names of the adapters in converted checkpoint ``base`` (directories with adapter.json)."""
    root = Path(base) / ADAPTERS_DIR
    if not root.is_dir():
        return []
    return sorted(
        p.name
        for p in root.iterdir()
        if (p / ADAPTER_JSON).is_file() and _NAME_RE.fullmatch(p.name)
    )


# ------------------------------------------------------------------ the prefix
@dataclass
class PrefixKV:
    """A P-Tuning v2 prefix: ``key`` / ``value`` [num_layers, pre_seq_len, hidden], fp32.

    Per layer and position the hidden axis is [heads, head_dim] flattened, the layout of
    the model's K/V after the QKV split (no rotary: prefix keys are used as they are).
    """

    key: torch.Tensor
    value: torch.Tensor

    def __post_init__(self) -> None:
        if self.key.dim() != 3 or self.key.shape != self.value.shape:
            raise AdapterError(
                f"prefix key/value must both be [num_layers, pre_seq_len, hidden], got "
                f"{list(self.key.shape)} and {list(self.value.shape)}"
            )

    @property
    def num_layers(self) -> int:
        return int(self.key.shape[0])

    @property
    def length(self) -> int:
        return int(self.key.shape[1])

    @property
    def hidden_size(self) -> int:
        return int(self.key.shape[2])

    def check_fits(self, cfg: ChatGLMConfig, where: str = "prefix") -> None:
        """Raises AdapterError unless the prefix has the base model's num_layers and hidden."""
        for field, got, want in (
            ("num_layers", self.num_layers, cfg.num_layers),
            ("hidden_size", self.hidden_size, cfg.hidden_size),
        ):
            if got != want:
                raise AdapterError(f"{where}: {field} is {got} but the base model has {want}")


# --------------------------------------------------------------------- reading
def read_json_object(path: Path, what: str = "") -> dict[str, object]:
    """A JSON object file, or an AdapterError naming it (``what``: a hint when it is missing)."""
    if not path.is_file():
        raise AdapterError(f"{path}: not found{f' ({what})' if what else ''}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise AdapterError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise AdapterError(f"{path}: expected a JSON object")
    return data


def positive_int(data: dict[str, object], field: str, path: Path, hint: str = "") -> int:
    """``data[field]`` if it is an integer > 0 (not a bool), else an AdapterError naming both."""
    value = data.get(field)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise AdapterError(f"{path}: field {field!r} must be an integer > 0, got {value!r}{hint}")
    return value


def read_adapter_json(path: Path) -> dict[str, object]:
    """adapter.json, checked for the format version, type, and integer size fields."""
    meta = read_json_object(path)
    version = meta.get("glmserve_adapter_format")
    if version != ADAPTER_FORMAT:
        raise AdapterError(
            f"{path}: field 'glmserve_adapter_format' is {version!r}; "
            f"only format {ADAPTER_FORMAT} is known"
        )
    if meta.get("type") not in ADAPTER_TYPES:
        raise AdapterError(
            f"{path}: field 'type' is {meta.get('type')!r}; known types: {', '.join(ADAPTER_TYPES)}"
        )
    for field in ("pre_seq_len", *_SIZE_FIELDS):
        positive_int(meta, field, path)
    return meta


def load_prefix_dir(path: str | os.PathLike, cfg: ChatGLMConfig | None = None) -> PrefixKV:
    """Reads one adapter directory (adapter.json + prefix.safetensors), checked against ``cfg``."""
    from safetensors import safe_open

    d = Path(path)
    meta = read_adapter_json(d / ADAPTER_JSON)
    if cfg is not None:
        for field in _SIZE_FIELDS:
            if meta[field] != getattr(cfg, field):
                raise AdapterError(
                    f"{d / ADAPTER_JSON}: field {field!r} is {meta[field]} but the base model "
                    f"has {getattr(cfg, field)}"
                )
    f = d / PREFIX_FILE
    if not f.is_file():
        raise AdapterError(f"{f}: not found")
    want = (meta["num_layers"], meta["pre_seq_len"], meta["hidden_size"])
    tensors = {}
    try:
        with safe_open(str(f), framework="pt") as st:
            names = set(st.keys())
            for name in (PREFIX_KEY, PREFIX_VALUE):
                if name not in names:
                    raise AdapterError(f"{f}: tensor {name!r} is missing")
                tensors[name] = st.get_tensor(name)
    except AdapterError:
        raise
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
        raise AdapterError(f"{f}: cannot read safetensors file: {e}") from None
    for name, t in tensors.items():
        if t.dtype != torch.float32:
            raise AdapterError(f"{f}: tensor {name!r} is {t.dtype}, expected float32 (F32)")
        if tuple(t.shape) != want:
            raise AdapterError(
                f"{f}: tensor {name!r} has shape {list(t.shape)}, expected {list(want)} "
                f"(num_layers, pre_seq_len, hidden_size from {ADAPTER_JSON})"
            )
    return PrefixKV(tensors[PREFIX_KEY], tensors[PREFIX_VALUE])


def load_prefix(base: str | os.PathLike, name: str, cfg: ChatGLMConfig | None = None) -> PrefixKV:
    """The prefix adapter ``name`` of converted checkpoint ``base`` (checked against cfg)."""
    d = adapter_dir(base, name)
    if not (d / ADAPTER_JSON).is_file():
        known = ", ".join(list_adapters(base)) or "none"
        raise AdapterError(
            f"no adapter {name!r} in {Path(base) / ADAPTERS_DIR} (known: {known}); add one with "
            "python -m glmserve.convert --ptuning DIR --base OUT --adapter-name NAME"
        )
    return load_prefix_dir(d, cfg)


# --------------------------------------------------------------------- writing
def check_can_write(base: str | os.PathLike, name: str, force: bool) -> Path:
    """The adapter's directory; raises if it exists already (unless ``force``)."""
    final = adapter_dir(base, name)
    if final.exists() and not force:
        raise AdapterError(f"{final}: adapter {name!r} already exists (use --force to replace it)")
    return final


def write_prefix_adapter(
    base: str | os.PathLike,
    name: str,
    prefix: PrefixKV,
    cfg: ChatGLMConfig,
    source: str,
    force: bool = False,
) -> Path:
    """Writes ``base/adapters/name/`` atomically (a temporary directory, then a rename)."""
    from safetensors.torch import save_file

    prefix.check_fits(cfg)
    final = check_can_write(base, name, force)
    meta = {
        "glmserve_adapter_format": ADAPTER_FORMAT,
        "type": "prefix",
        "pre_seq_len": prefix.length,
        "num_layers": cfg.num_layers,
        "hidden_size": cfg.hidden_size,
        "num_attention_heads": cfg.num_attention_heads,
        "source": source,
    }
    tmp = final.parent / f".{name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        tensors = {
            PREFIX_KEY: prefix.key.detach().float().contiguous(),
            PREFIX_VALUE: prefix.value.detach().float().contiguous(),
        }
        save_file(
            tensors,
            str(tmp / PREFIX_FILE),
            metadata={"format": "pt", "glmserve_adapter_format": str(ADAPTER_FORMAT)},
        )
        (tmp / ADAPTER_JSON).write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
        if final.exists():
            old = final.parent / f".{name}.old-{os.getpid()}"
            os.replace(final, old)
            shutil.rmtree(old)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final
