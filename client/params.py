"""Sampling parameters and the request tensors of the ``chatglm`` ensemble (the public contract)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from glmserve import contract

MODEL_NAME = "chatglm"
TEXT_INPUT = "text_input"
TEXT_OUTPUT = "text_output"
TOKEN_COUNT = "token_count"


class Chunk(NamedTuple):
    """One streamed response: its text delta and how many generated tokens it carries.

    ``tokens`` is the response's ``token_count`` output (usually 1; more when the
    server merged steps that piled up while it was behind), or 1 when the server
    does not send that output (a model repository from before it existed).
    """

    text: str
    tokens: int


@dataclass(frozen=True)
class InputSpec:
    """One optional input tensor: its Triton datatype, numpy dtype and Python type."""

    datatype: str
    dtype: type
    kind: type


# Optional inputs of the ensemble, keyed by tensor name: from the request contract
# (glmserve/contract.py), in its order.
OPTIONAL_INPUTS: dict[str, InputSpec] = {
    f.name: InputSpec(f.dtype.value, np.dtype(f.dtype.numpy).type, f.dtype.python)
    for f in contract.optional_inputs(contract.ENSEMBLE)
}

# Friendly aliases accepted as keyword arguments ("seed" for random_seed).
ALIASES = {f.alias: f.name for f in contract.optional_inputs(contract.ENSEMBLE) if f.alias}

History = Sequence[Sequence[str]]


def normalize_sampling(sampling: Mapping[str, Any]) -> dict[str, Any]:
    """Validate sampling keyword arguments; return them keyed by tensor name.

    ``None`` values are dropped (the server's default applies). Unknown names raise
    ``TypeError``; values of the wrong type raise ``ValueError`` (the contract's
    :class:`~glmserve.contract.RequestError`). Ranges are the server's to check.
    """
    out: dict[str, Any] = {}
    for key, value in sampling.items():
        name = ALIASES.get(key, key)
        if name not in OPTIONAL_INPUTS:
            known = ", ".join(sorted([*OPTIONAL_INPUTS, *ALIASES]))
            raise TypeError(f"unknown sampling argument {key!r} (known: {known})")
        if value is None:
            continue
        if name in out:
            raise TypeError(f"sampling argument {name!r} given twice")
        out[name] = contract.field(name).coerce(value)
    return out


def history_json(history: History | None) -> str | None:
    """The ``history`` input: a JSON list of [question, answer] pairs (None when empty)."""
    if not history:
        return None
    pairs: list[list[str]] = []
    for turn in history:
        if isinstance(turn, str) or len(turn) != 2:
            raise ValueError(f"history entries must be [question, answer] pairs, got {turn!r}")
        q, a = turn
        if not isinstance(q, str) or not isinstance(a, str):
            raise ValueError(f"history entries must hold strings, got {turn!r}")
        pairs.append([q, a])
    return json.dumps(pairs, ensure_ascii=False)


@dataclass(frozen=True)
class TensorValue:
    """One input tensor of a request, independent of the protocol."""

    name: str
    datatype: str
    array: np.ndarray


def build_tensors(
    prompt: str, history: History | None, sampling: Mapping[str, Any], stream: bool
) -> list[TensorValue]:
    """All input tensors for one request (each of shape [1])."""
    if not isinstance(prompt, str):
        raise ValueError(f"prompt must be a string, got {type(prompt).__name__}")
    params = normalize_sampling(sampling)
    tensors = [
        TensorValue(TEXT_INPUT, "BYTES", np.array([prompt.encode("utf-8")], dtype=np.object_))
    ]
    for name, value in params.items():
        spec = OPTIONAL_INPUTS[name]
        tensors.append(TensorValue(name, spec.datatype, np.array([value], dtype=spec.dtype)))
    tensors.append(TensorValue("stream", "BOOL", np.array([stream], dtype=np.bool_)))
    hist = history_json(history)
    if hist is not None:
        tensors.append(
            TensorValue("history", "BYTES", np.array([hist.encode("utf-8")], dtype=np.object_))
        )
    return tensors


def build_generate_body(
    prompt: str, history: History | None, sampling: Mapping[str, Any], stream: bool
) -> dict[str, Any]:
    """The JSON body of Triton's HTTP generate endpoints (each key names an input tensor)."""
    if not isinstance(prompt, str):
        raise ValueError(f"prompt must be a string, got {type(prompt).__name__}")
    body: dict[str, Any] = {TEXT_INPUT: prompt}
    body.update(normalize_sampling(sampling))
    body["stream"] = stream
    hist = history_json(history)
    if hist is not None:
        body["history"] = hist
    return body
