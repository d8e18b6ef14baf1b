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
# Per-response outputs besides text_output and token_count (model_repository/chatglm).
INDEX, FINISH_REASON, TOKEN_LOGPROBS = "index", "finish_reason", "token_logprobs"
PROMPT_TOKENS, COMPLETION_TOKENS = "prompt_tokens", "completion_tokens"


class Chunk(NamedTuple):
    """One streamed response: one choice's text delta and how many generated tokens it
    carries, with the choice's state.

    ``tokens`` is the response's ``token_count`` output (usually 1; more when the
    server merged steps that piled up while it was behind), or 1 when the server
    does not send that output (a model repository from before it existed).
    ``index`` is the choice (0 .. n-1); ``finish_reason`` is "" until the choice's last
    response, then "stop" or "length"; ``prompt_tokens`` / ``completion_tokens`` are the
    usage (completion: the choice's tokens so far); ``logprobs`` holds one entry per
    token (``{"id", "token", "bytes", "logprob", "top_logprobs"}``) when asked for.
    """

    text: str
    tokens: int
    index: int = 0
    finish_reason: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    logprobs: list[dict[str, Any]] | None = None


@dataclass
class Choice:
    """One choice of a finished request."""

    index: int
    text: str = ""
    finish_reason: str = ""
    completion_tokens: int = 0
    logprobs: list[dict[str, Any]] | None = None


@dataclass
class Completion:
    """A finished request: its choices (by index) and the usage."""

    choices: list[Choice]
    prompt_tokens: int = 0

    @property
    def completion_tokens(self) -> int:
        return sum(c.completion_tokens for c in self.choices)

    @staticmethod
    def collect(chunks: Any) -> Completion:
        """Assembles the chunks of one request (any order of choices)."""
        choices: dict[int, Choice] = {}
        prompt = 0
        for ch in chunks:
            c = choices.setdefault(ch.index, Choice(ch.index))
            c.text += ch.text
            c.completion_tokens = max(c.completion_tokens, ch.completion_tokens)
            if ch.finish_reason:
                c.finish_reason = ch.finish_reason
            if ch.logprobs is not None:
                c.logprobs = (c.logprobs or []) + ch.logprobs
            prompt = max(prompt, ch.prompt_tokens)
        return Completion([choices[i] for i in sorted(choices)], prompt)


@dataclass(frozen=True)
class InputSpec:
    """One optional input tensor: its Triton datatype, numpy dtype and Python type."""

    datatype: str
    dtype: type
    kind: type
    is_list: bool = False


# Optional inputs of the ensemble, keyed by tensor name: from the request contract
# (glmserve/contract.py), in its order.
OPTIONAL_INPUTS: dict[str, InputSpec] = {
    f.name: InputSpec(f.dtype.value, np.dtype(f.dtype.numpy).type, f.dtype.python, f.is_list)
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
        if value is None or (isinstance(value, (list, tuple)) and not value):
            continue
        if name in out:
            raise TypeError(f"sampling argument {name!r} given twice")
        if OPTIONAL_INPUTS[name].is_list and isinstance(value, str):
            value = [value]  # stop="x" means stop=["x"], as in OpenAI's API
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
    """All input tensors for one request (shape [1], or [k] for a list field)."""
    if not isinstance(prompt, str):
        raise ValueError(f"prompt must be a string, got {type(prompt).__name__}")
    params = normalize_sampling(sampling)
    tensors = [
        TensorValue(TEXT_INPUT, "BYTES", np.array([prompt.encode("utf-8")], dtype=np.object_))
    ]
    for name, value in params.items():
        spec = OPTIONAL_INPUTS[name]
        if spec.datatype == "BYTES":
            value = (
                [v.encode("utf-8") for v in value] if isinstance(value, list) else value.encode()
            )
        values = value if isinstance(value, list) else [value]
        tensors.append(TensorValue(name, spec.datatype, np.array(values, dtype=spec.dtype)))
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
    """The JSON body of Triton's HTTP generate endpoints (each key names an input tensor;
    a list field is a JSON array)."""
    if not isinstance(prompt, str):
        raise ValueError(f"prompt must be a string, got {type(prompt).__name__}")
    body: dict[str, Any] = {TEXT_INPUT: prompt}
    body.update(normalize_sampling(sampling))
    body["stream"] = stream
    hist = history_json(history)
    if hist is not None:
        body["history"] = hist
    return body


def parse_logprobs(raw: Any) -> list[dict[str, Any]] | None:
    """The ``token_logprobs`` output (JSON text; "" when not asked for) -> its entries."""
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8")
    if not raw:
        return None
    value = json.loads(raw)
    if not isinstance(value, list):
        raise ValueError(f"token_logprobs: expected a JSON list, got {raw[:80]!r}")
    return value
