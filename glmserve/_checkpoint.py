"""Checkpoint files: the expected tensors, reading hub shards, streaming safetensors out.

Shared by the converter (``glmserve.convert``) and the reference model, which loads
hub-style directories through the same reader.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from glmserve.config import ChatGLMConfig


class CheckpointError(ValueError):
    """A checkpoint directory or file that cannot be read; the message names the file/tensor."""


LAYER_LINEARS = (
    "attention.query_key_value",
    "attention.dense",
    "mlp.dense_h_to_4h",
    "mlp.dense_4h_to_h",
)
# Buffers of THUDM's modules that hub checkpoints carry and we recompute.
IGNORED_SUFFIXES = (".attention.rotary_emb.inv_freq",)

SAFETENSORS_DTYPES: dict[torch.dtype, str] = {
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int8: "I8",
    torch.float8_e4m3fn: "F8_E4M3",
}
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def expected_shapes(cfg: ChatGLMConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor a ChatGLM checkpoint must hold, hub names, PyTorch [out, in], in file order."""
    h, inner, v = cfg.hidden_size, cfg.inner_hidden_size, cfg.vocab_size
    shapes: dict[str, tuple[int, ...]] = {"transformer.word_embeddings.weight": (v, h)}
    for i in range(cfg.num_layers):
        p = f"transformer.layers.{i}."
        shapes.update(
            {
                p + "input_layernorm.weight": (h,),
                p + "input_layernorm.bias": (h,),
                p + "attention.query_key_value.weight": (3 * h, h),
                p + "attention.query_key_value.bias": (3 * h,),
                p + "attention.dense.weight": (h, h),
                p + "attention.dense.bias": (h,),
                p + "post_attention_layernorm.weight": (h,),
                p + "post_attention_layernorm.bias": (h,),
                p + "mlp.dense_h_to_4h.weight": (inner, h),
                p + "mlp.dense_h_to_4h.bias": (inner,),
                p + "mlp.dense_4h_to_h.weight": (h, inner),
                p + "mlp.dense_4h_to_h.bias": (h,),
            }
        )
    shapes["transformer.final_layernorm.weight"] = (h,)
    shapes["transformer.final_layernorm.bias"] = (h,)
    shapes["lm_head.weight"] = (v, h)
    return shapes


def quantized_names(cfg: ChatGLMConfig, lm_head: bool) -> list[str]:
    """The ``X.weight`` names that INT8 conversion quantizes."""
    names = [
        f"transformer.layers.{i}.{lin}.weight"
        for i in range(cfg.num_layers)
        for lin in LAYER_LINEARS
    ]
    if lm_head:
        names.append("lm_head.weight")
    return names


def is_ignored(name: str) -> bool:
    return name.endswith(IGNORED_SUFFIXES)


# ---------------------------------------------------------------- hub sources
@dataclass
class Source:
    """Where a hub-style checkpoint's tensors are: format and shard files with their names."""

    kind: str  # "safetensors" or "bin"
    shards: dict[Path, list[str] | None]  # file -> names in it (None: unknown until loaded)


def find_source(src: str | os.PathLike) -> Source:
    """Finds the weight files of a hub-style directory: *.safetensors preferred over .bin."""
    d = Path(src)
    if not d.is_dir():
        raise CheckpointError(f"{d}: checkpoint directory not found")
    st_index = d / "model.safetensors.index.json"
    st_files = sorted(d.glob("*.safetensors"))
    if st_index.is_file():
        return Source("safetensors", _shards_from_index(st_index))
    if st_files:
        return Source("safetensors", {f: None for f in st_files})
    bin_index = d / "pytorch_model.bin.index.json"
    if bin_index.is_file():
        return Source("bin", _shards_from_index(bin_index))
    single = d / "pytorch_model.bin"
    if single.is_file():
        return Source("bin", {single: None})
    shards = sorted(d.glob("pytorch_model-*.bin"))
    if shards:
        raise CheckpointError(
            f"{d}: found {len(shards)} pytorch_model-*.bin shards but no pytorch_model.bin.index.json"
        )
    raise CheckpointError(
        f"{d}: no weights found (expected *.safetensors, or pytorch_model.bin / "
        "pytorch_model-*.bin with pytorch_model.bin.index.json)"
    )


def _shards_from_index(index: Path) -> dict[Path, list[str] | None]:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise CheckpointError(f"{index}: not a valid index (no weight_map): {e}") from None
    shards: dict[Path, list[str] | None] = {}
    for name, fname in weight_map.items():
        path = index.parent / fname
        names = shards.setdefault(path, [])
        assert names is not None
        names.append(name)
    for path in shards:
        if not path.is_file():
            raise CheckpointError(f"{path}: shard listed in {index.name} is missing")
    return shards


def iter_shard(path: Path) -> Iterator[tuple[str, torch.Tensor]]:
    """Tensors of one shard, one at a time (safetensors lazily, .bin memory-mapped)."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            f = safe_open(str(path), framework="pt")
        except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
            raise CheckpointError(f"{path}: cannot read safetensors file: {e}") from None
        with f:
            for name in f.keys():  # noqa: SIM118 - safe_open has no __iter__
                yield name, f.get_tensor(name)
        return
    try:
        sd = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:
        # Legacy (non-zip) pickles cannot be memory-mapped.
        try:
            sd = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001
            raise CheckpointError(f"{path}: cannot load with weights_only=True: {e}") from None
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"{path}: cannot load with weights_only=True: {e}") from None
    if not isinstance(sd, dict):
        raise CheckpointError(f"{path}: expected a state dict, got {type(sd).__name__}")
    for name in list(sd.keys()):
        t = sd.pop(name)
        if not isinstance(t, torch.Tensor):
            raise CheckpointError(f"{path}: entry {name!r} is not a tensor")
        yield name, t


def check_tensor(name: str, t: torch.Tensor, shape: tuple[int, ...], where: Path) -> None:
    if t.dtype not in FLOAT_DTYPES:
        raise CheckpointError(
            f"{where}: tensor {name!r} has dtype {t.dtype}, expected float16, bfloat16 or float32"
        )
    if tuple(t.shape) != shape:
        raise CheckpointError(
            f"{where}: tensor {name!r} has shape {list(t.shape)}, expected {list(shape)} "
            "(from config.json)"
        )


def load_hub_state_dict(src: str | os.PathLike, cfg: ChatGLMConfig) -> dict[str, torch.Tensor]:
    """All tensors of a hub-style directory, validated (names, shapes, dtypes), in memory."""
    shapes = expected_shapes(cfg)
    source = find_source(src)
    sd: dict[str, torch.Tensor] = {}
    for path in source.shards:
        for name, t in iter_shard(path):
            if is_ignored(name):
                continue
            if name not in shapes:
                raise CheckpointError(f"{path}: unknown tensor name {name!r}")
            check_tensor(name, t, shapes[name], path)
            sd[name] = t.clone() if path.suffix == ".bin" else t
    missing = [n for n in shapes if n not in sd]
    if missing:
        raise CheckpointError(f"{src}: missing tensor(s) {_short_list(missing)}")
    return sd


def _short_list(names: list[str], n: int = 5) -> str:
    shown = ", ".join(repr(x) for x in names[:n])
    return shown + (f" and {len(names) - n} more" if len(names) > n else "")


# ------------------------------------------------------- streaming safetensors
class StreamingSafetensorsWriter:
    """Writes one .safetensors file tensor by tensor, in any order, with bounded memory.

    The header (names, dtypes, shapes, offsets) is fixed up front from ``specs``; the
    file is pre-sized and each tensor is written at its offset. The file is created
    under a temporary name and renamed by ``close()`` once every tensor has been written.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        specs: list[tuple[str, torch.dtype, tuple[int, ...]]],
        metadata: dict[str, str] | None = None,
    ) -> None:
        self.path = Path(path)
        self.tmp = self.path.with_name(self.path.name + ".partial")
        self.specs: dict[str, tuple[torch.dtype, tuple[int, ...], int, int]] = {}
        header: dict[str, object] = {}
        if metadata:
            header["__metadata__"] = dict(metadata)
        off = 0
        for name, dtype, shape in specs:
            nbytes = torch.Size(shape).numel() * torch.empty((), dtype=dtype).element_size()
            self.specs[name] = (dtype, tuple(shape), off, off + nbytes)
            header[name] = {
                "dtype": SAFETENSORS_DTYPES[dtype],
                "shape": list(shape),
                "data_offsets": [off, off + nbytes],
            }
            off += nbytes
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        self.data_start = 8 + len(raw)
        self.total = self.data_start + off
        self.written: set[str] = set()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.f = open(self.tmp, "wb")  # noqa: SIM115 - closed by close()/abort()
        self.f.write(struct.pack("<Q", len(raw)))
        self.f.write(raw)
        self.f.truncate(self.total)

    def write(self, name: str, t: torch.Tensor) -> None:
        dtype, shape, begin, end = self.specs[name]
        if t.dtype != dtype or tuple(t.shape) != shape:
            raise CheckpointError(
                f"internal: {name} is {t.dtype} {list(t.shape)}, header says {dtype} {list(shape)}"
            )
        if name in self.written:
            raise CheckpointError(f"tensor {name!r} appears twice in the source checkpoint")
        arr = t.detach().contiguous().cpu().view(torch.uint8).numpy()
        assert arr.nbytes == end - begin
        self.f.seek(self.data_start + begin)
        self.f.write(memoryview(arr).cast("B"))
        self.written.add(name)

    def close(self) -> Path:
        missing = [n for n in self.specs if n not in self.written]
        if missing:
            self.abort()
            raise CheckpointError(f"missing tensor(s) {_short_list(missing)}")
        self.f.close()
        os.replace(self.tmp, self.path)
        return self.path

    def abort(self) -> None:
        if not self.f.closed:
            self.f.close()
        self.tmp.unlink(missing_ok=True)
