"""The request contract: one declarative table of every request field.

Every place that reads, checks, fills in or documents a request field takes it
from :data:`FIELDS`:

- ``preprocessing`` (Triton Python model) reads the ensemble's inputs, checks type,
  shape and range, fills in defaults and forwards the decoder's fields;
- the C++ backend and engine use ``backend_src/engine/request_fields.gen.h``, generated
  from this table (``python -m glmserve.contract_gen --write``; CI checks that it is
  current), for parsing the decoder's inputs and for the engine's range checks;
- the client (``client/params.py``) takes the optional inputs' types from it;
- the model configs' input lists and ``docs/request_fields.md`` are generated from it.

Adding a field: add a :class:`Field` here, run ``python -m glmserve.contract_gen --write``,
and write the code that uses the field (the engine's ``SamplingParams`` member named by
``engine_member``, for a decoder field).

Errors are typed (:class:`RequestError` with an :class:`ErrorCode` and the field), never
told apart by their text. The message always names the field first.
"""

from __future__ import annotations

import argparse
import enum
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

ENSEMBLE = "chatglm"
DECODER = "chatglm_decoder"
PREPROCESSING = "preprocessing"


class ErrorCode(enum.Enum):
    """What kind of failure; maps onto Triton's error codes and HTTP statuses."""

    INVALID_ARGUMENT = "invalid_argument"  # the request is wrong: fix it (HTTP 400)
    UNAVAILABLE = "unavailable"  # the server cannot take it now: retry (queue full, not serving)
    INTERNAL = "internal"  # the server failed


class RequestError(ValueError):
    """A request that cannot be served; ``field`` names the offending field (or "").

    The message begins with the field's name (``"top_p must be in (0, 1] ..."``); one
    that does not gets ``"field: "`` in front.
    """

    def __init__(self, field: str, message: str, code: ErrorCode = ErrorCode.INVALID_ARGUMENT):
        if field and not message.startswith(field):
            message = f"{field}: {message}"
        super().__init__(message)
        self.field = field
        self.code = code


class DType(enum.Enum):
    """Triton datatypes of request fields, with their numpy and Python counterparts."""

    INT32 = "INT32"
    UINT64 = "UINT64"
    FP32 = "FP32"
    BOOL = "BOOL"
    BYTES = "BYTES"

    @property
    def numpy(self) -> str:
        return {"INT32": "int32", "UINT64": "uint64", "FP32": "float32", "BOOL": "bool"}.get(
            self.value, "object"
        )

    @property
    def python(self) -> type:
        return {"INT32": int, "UINT64": int, "FP32": float, "BOOL": bool, "BYTES": str}[self.value]

    @property
    def pbtxt(self) -> str:
        return "TYPE_STRING" if self is DType.BYTES else f"TYPE_{self.value}"

    @property
    def integral(self) -> bool:
        return self in (DType.INT32, DType.UINT64)


# Integer limits of the wire types.
_INT_LIMITS = {DType.INT32: (-(2**31), 2**31 - 1), DType.UINT64: (0, 2**64 - 1)}

# Maxima known only at run time: the model's context (max_sequence_length) and its
# vocabulary size. The table names them; checks take their values from Limits.
CONTEXT = "context"
VOCAB = "vocab"


@dataclass(frozen=True)
class Limits:
    """The model's values of the symbolic maxima (None: unknown, that bound is not checked)."""

    context: int | None = None
    vocab: int | None = None

    def resolve(self, bound: float | str | None) -> float | None:
        if bound == CONTEXT:
            return self.context
        if bound == VOCAB:
            return self.vocab
        return bound  # type: ignore[return-value]


NO_LIMITS = Limits()


@dataclass(frozen=True)
class Field:
    """One request field (an input tensor of one or more models).

    ``models``: where it is an input (``chatglm`` ensemble and/or ``chatglm_decoder``).
    ``max_items`` None: a single value (dims [1]); else a list of up to that many values
    (dims [-1]). ``minimum``/``maximum`` bound numbers (``maximum`` may be
    :data:`CONTEXT` or :data:`VOCAB`); ``*_exclusive`` make a bound strict. ``convention`` explains special
    values ("0 = greedy"). ``default``: the value used when the field is absent (None:
    no default; the field is required or its absence has a meaning of its own).
    ``engine_member``: the ``glm::SamplingParams`` member a decoder field sets (None:
    the Triton glue uses it itself). ``forward``: preprocessing forwards it to the
    decoder as ``out_<name>`` with the default filled in.
    """

    name: str
    dtype: DType
    doc: str
    models: frozenset[str]
    default: Any = None
    required: bool = False
    max_items: int | None = None
    minimum: float | None = None
    minimum_exclusive: bool = False
    maximum: float | str | None = None
    maximum_exclusive: bool = False
    convention: str = ""
    engine_member: str | None = None
    forward: bool = False
    max_bytes: int | None = None  # BYTES: per value
    alias: str | None = None  # a shorter keyword / command-line name ("seed")

    @property
    def is_list(self) -> bool:
        return self.max_items is not None

    @property
    def flag(self) -> str:
        """The command-line option, e.g. ``--max-tokens`` or ``--seed``."""
        return "--" + (self.alias or self.name).replace("_", "-")

    def requirement(self, limits: Limits = NO_LIMITS) -> str:
        """The allowed values in words, e.g. ``"in (0, 1]"`` or ``"a finite number >= 0"``."""
        maximum = limits.resolve(self.maximum)
        lo, hi = _fmt(self.minimum), _fmt(maximum)
        if self.minimum is not None and maximum is not None:
            left = "(" if self.minimum_exclusive else "["
            right = ")" if self.maximum_exclusive else "]"
            text = f"in {left}{lo}, {hi}{right}"
        elif self.minimum is not None:
            op = ">" if self.minimum_exclusive else ">="
            text = f"{op} {lo}"
            if self.dtype is DType.FP32:
                text = f"a finite number {text}"
        elif maximum is not None:
            op = "<" if self.maximum_exclusive else "<="
            text = f"{op} {hi}"
        else:
            text = {
                DType.INT32: "an integer",
                DType.UINT64: "an integer in [0, 2**64)",
                DType.FP32: "a finite number",
                DType.BOOL: "true or false",
                DType.BYTES: "UTF-8 text",
            }[self.dtype]
        return f"{text} ({self.convention})" if self.convention else text

    def range_error(self, value: Any, limits: Limits = NO_LIMITS) -> str | None:
        """None when ``value`` (one number) is allowed, else the message (field first)."""
        if self.dtype in (DType.BOOL, DType.BYTES):
            return None
        v = float(value)
        maximum = limits.resolve(self.maximum)
        ok = math.isfinite(v)
        if ok and self.minimum is not None:
            ok = v > self.minimum if self.minimum_exclusive else v >= self.minimum
        if ok and maximum is not None:
            ok = v < float(maximum) if self.maximum_exclusive else v <= float(maximum)
        if ok:
            return None
        return f"{self.name} must be {self.requirement(limits)}, got {_fmt(value)}"

    def check(self, value: Any, limits: Limits = NO_LIMITS) -> Any:
        """``value`` as this field's Python type, or :class:`RequestError`.

        :meth:`coerce`, then the range of every number.
        """
        value = self.coerce(value)
        for v in value if self.is_list else [value]:
            msg = self.range_error(v, limits)
            if msg is not None:
                raise RequestError(self.name, msg)
        return value

    def coerce(self, value: Any) -> Any:
        """``value`` as this field's Python type, or :class:`RequestError`: the Python type
        (bool is not a number; an int is accepted for a float), the wire type's limits,
        UTF-8 and the byte limit of strings, the length of lists. No range check."""
        if not self.is_list:
            return self._coerce_one(value)
        if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
            raise RequestError(self.name, f"expected a list of {self._kind()}, got {value!r}")
        items = [self._coerce_one(v) for v in value]
        assert self.max_items is not None
        if len(items) > self.max_items:
            raise RequestError(
                self.name, f"at most {self.max_items} values are allowed, got {len(items)}"
            )
        return items

    def _kind(self) -> str:
        return {"INT32": "integers", "UINT64": "integers", "FP32": "numbers"}.get(
            self.dtype.value, "bools" if self.dtype is DType.BOOL else "strings"
        )

    def _coerce_one(self, value: Any) -> Any:
        kind = self.dtype.python
        if kind is bool:
            if type(value).__name__ in ("bool", "bool_"):
                return bool(value)
            raise RequestError(self.name, f"must be a bool, got {value!r}")
        if kind is str:
            if isinstance(value, bytes):
                try:
                    value = value.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise RequestError(
                        self.name, f"not valid UTF-8 ({e.reason} at byte {e.start})"
                    ) from None
            if not isinstance(value, str):
                raise RequestError(self.name, f"must be a string, got {value!r}")
            if self.max_bytes is not None and len(value.encode("utf-8")) > self.max_bytes:
                raise RequestError(
                    self.name, f"a value is over the limit of {self.max_bytes} bytes"
                )
            return value
        if type(value).__name__ in ("bool", "bool_"):
            raise RequestError(self.name, f"must be a number, got {value!r}")
        if kind is int:
            if not _is_integer(value):
                raise RequestError(self.name, f"must be an integer, got {value!r}")
            v = int(value)
            lo, hi = _INT_LIMITS[self.dtype]
            if not lo <= v <= hi:
                raise RequestError(self.name, f"does not fit {self.dtype.value}: {v}")
            return v
        if not (_is_integer(value) or _is_float(value)):
            raise RequestError(self.name, f"must be a number, got {value!r}")
        return float(value)


def _is_integer(v: Any) -> bool:
    return isinstance(v, int) or type(v).__module__ == "numpy" and "int" in type(v).__name__


def _is_float(v: Any) -> bool:
    return isinstance(v, float) or type(v).__module__ == "numpy" and "float" in type(v).__name__


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float) and v.is_integer() and math.isfinite(v):
        return str(int(v))
    return str(v)


_BOTH = frozenset({ENSEMBLE, DECODER})

FIELDS: tuple[Field, ...] = (
    Field(
        "text_input",
        DType.BYTES,
        "The user's message (UTF-8). With no history it is the whole prompt.",
        frozenset({ENSEMBLE}),
        required=True,
    ),
    Field(
        "history",
        DType.BYTES,
        'Earlier turns: a JSON list of [question, answer] string pairs, e.g. [["hi", "hello"]].',
        frozenset({ENSEMBLE}),
    ),
    Field(
        "input_ids",
        DType.INT32,
        "The whole prompt's ids, ending with [gMASK] <sop> (the decoder's own input).",
        frozenset({DECODER}),
        required=True,
        max_items=2**31 - 1,
    ),
    Field(
        "max_tokens",
        DType.INT32,
        "How many tokens to generate at most. Default: the model parameter "
        "default_max_tokens (128), capped by the room the prompt leaves in the context.",
        _BOTH,
        minimum=1,
        maximum=CONTEXT,
        engine_member="max_tokens",
        forward=True,
    ),
    Field(
        "temperature",
        DType.FP32,
        "Sampling temperature; 0 decodes greedily.",
        _BOTH,
        default=0.0,
        minimum=0,
        convention="0 = greedy",
        engine_member="temperature",
        forward=True,
    ),
    Field(
        "top_k",
        DType.INT32,
        "Keep only the k most likely tokens before sampling.",
        _BOTH,
        default=0,
        minimum=0,
        convention="0 = off",
        engine_member="top_k",
        forward=True,
    ),
    Field(
        "top_p",
        DType.FP32,
        "Nucleus sampling: keep the most likely tokens whose mass reaches top_p.",
        _BOTH,
        default=1.0,
        minimum=0,
        minimum_exclusive=True,
        maximum=1,
        convention="1 = off",
        engine_member="top_p",
        forward=True,
    ),
    Field(
        "repetition_penalty",
        DType.FP32,
        "Hugging Face's repetition penalty over prompt and generated ids.",
        _BOTH,
        default=1.0,
        minimum=0,
        minimum_exclusive=True,
        convention="1 = off",
        engine_member="repetition_penalty",
        forward=True,
    ),
    Field(
        "presence_penalty",
        DType.FP32,
        "OpenAI's presence penalty: subtracted once from the logit of every id generated so far.",
        _BOTH,
        default=0.0,
        minimum=-2,
        maximum=2,
        convention="0 = off",
        engine_member="presence_penalty",
        forward=True,
    ),
    Field(
        "frequency_penalty",
        DType.FP32,
        "OpenAI's frequency penalty: subtracted from an id's logit once per time it was generated.",
        _BOTH,
        default=0.0,
        minimum=-2,
        maximum=2,
        convention="0 = off",
        engine_member="frequency_penalty",
        forward=True,
    ),
    Field(
        "random_seed",
        DType.UINT64,
        "Seed of the request's own random stream: the same seed gives the same tokens, "
        "whatever else is batched.",
        _BOTH,
        default=0,
        engine_member="seed",
        forward=True,
        alias="seed",
    ),
    Field(
        "stream",
        DType.BOOL,
        "Stream: one response per generated piece (false: one response with the whole text).",
        _BOTH,
        default=False,
        forward=True,
    ),
    Field(
        "ignore_eos",
        DType.BOOL,
        "Keep generating past <eop> until max_tokens.",
        _BOTH,
        default=False,
        engine_member="ignore_eos",
        forward=True,
    ),
    Field(
        "n",
        DType.INT32,
        "How many choices to generate for the prompt (one prefill; the prompt's KV blocks "
        "are shared). Choice i draws from random_seed + i: the ids of a single request with that "
        "seed on the CPU, on the GPU up to fp16 rounding (choices after the first feed <sop> "
        "in a decode step, and a near-tied draw can fall the other way). Needs temperature > 0.",
        _BOTH,
        default=1,
        minimum=1,
        maximum=16,
        engine_member="n",
        forward=True,
    ),
    Field(
        "logprobs",
        DType.INT32,
        "Return each generated token's log-probability and those of this many most likely "
        "alternatives (log-softmax of the raw logits, before penalties and temperature).",
        _BOTH,
        default=-1,
        minimum=-1,
        maximum=20,
        convention="-1 = off",
        engine_member="logprobs",
        forward=True,
    ),
    Field(
        "stop",
        DType.BYTES,
        "Stop strings: generation ends as soon as the generated text contains one; the text "
        "ends before it.",
        _BOTH,
        default=(),
        max_items=16,
        max_bytes=256,
        engine_member="stop",
        forward=True,
    ),
    Field(
        "stop_token_ids",
        DType.INT32,
        "Stop ids: generation ends at the first of these ids; its text is left out.",
        _BOTH,
        default=(),
        max_items=64,
        minimum=0,
        maximum=VOCAB,
        maximum_exclusive=True,
        engine_member="stop_token_ids",
        forward=True,
    ),
    Field(
        "adapter",
        DType.BYTES,
        "The adapter to run with: a P-Tuning v2 prefix the server loaded at start "
        "(docs/adapters.md); empty: the base model.",
        _BOTH,
        default="",
        max_bytes=64,
        engine_member="adapter",
        forward=True,
    ),
    Field(
        "include_stop_str_in_output",
        DType.BOOL,
        "Keep the stop string (or the stop id's text) at the end of the text.",
        _BOTH,
        default=False,
        engine_member="include_stop_str_in_output",
        forward=True,
    ),
)

BY_NAME: dict[str, Field] = {f.name: f for f in FIELDS}


def field(name: str) -> Field:
    return BY_NAME[name]


def fields_of(model: str) -> tuple[Field, ...]:
    """The input fields of one model, in table order."""
    if model == PREPROCESSING:
        model = ENSEMBLE
    return tuple(f for f in FIELDS if model in f.models)


def forwarded() -> tuple[Field, ...]:
    """The fields preprocessing hands to the decoder (as ``out_<name>``), in table order."""
    return tuple(f for f in FIELDS if f.forward)


def optional_inputs(model: str = ENSEMBLE) -> tuple[Field, ...]:
    """What a client may set besides the required fields (``stream`` and ``history`` are
    set by their own client arguments, not as sampling keywords)."""
    return tuple(
        f for f in fields_of(model) if not f.required and f.name not in ("stream", "history")
    )


# numpy dtype kind/name -> the Triton datatype name a client sent.
_WIRE_NAMES = {
    "bool": "BOOL",
    "int8": "INT8",
    "int16": "INT16",
    "int32": "INT32",
    "int64": "INT64",
    "uint8": "UINT8",
    "uint16": "UINT16",
    "uint32": "UINT32",
    "uint64": "UINT64",
    "float16": "FP16",
    "float32": "FP32",
    "float64": "FP64",
}


def wire_type(dtype: Any) -> str:
    """The Triton datatype name of a numpy dtype (object and bytes arrays are BYTES)."""
    name = getattr(dtype, "name", str(dtype))
    if getattr(dtype, "kind", "") in ("O", "S", "U"):
        return "BYTES"
    return _WIRE_NAMES.get(name, name)


def from_array(f: Field, array: Any, batched: bool = True, limits: Limits = NO_LIMITS) -> Any:
    """One request's input tensor (a numpy array as Triton hands it over) as the field's
    checked value. ``batched``: the model has a batch dimension, so the array is [1, ...]."""
    got = wire_type(array.dtype)
    if got != f.dtype.value:
        raise RequestError(f.name, f"expected {f.dtype.value}, got {got}")
    shape = list(array.shape)
    if f.is_list:
        want = "[1, n]" if batched else "[n]"
        if len(shape) != (2 if batched else 1) or (batched and shape[0] != 1):
            raise RequestError(f.name, f"expected shape {want} (one request), got shape {shape}")
        return f.check(array.reshape(-1).tolist(), limits)
    if array.size != 1:
        want = "[1, 1]" if batched else "[1]"
        raise RequestError(f.name, f"expected a single value (shape {want}), got shape {shape}")
    return f.check(array.reshape(-1)[0], limits)


def cli_type(f: Field, limits: Limits = NO_LIMITS) -> Callable[[str], Any]:
    """An argparse ``type=`` for a number field: parses the text, then :meth:`Field.check`."""

    def parse(text: str) -> Any:
        try:
            value = int(text) if f.dtype.integral else float(text)
        except ValueError:
            kind = "an integer" if f.dtype.integral else "a number"
            raise argparse.ArgumentTypeError(f"{f.flag}: not {kind}: {text!r}") from None
        try:
            return f.check([value], limits)[0] if f.is_list else f.check(value, limits)
        except RequestError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    parse.__name__ = f.name  # argparse names the type in its messages
    return parse


def add_cli_options(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    names: Iterable[str],
    defaults: dict[str, Any] | None = None,
    short: dict[str, str] | None = None,
) -> None:
    """Adds ``--<field>`` options for the named fields, with the contract's type, range and
    meaning (a list field: repeat the option). Without a default an option is None when
    left out (the server's default). ``short`` adds short flags (``{"n": "-n"}``)."""
    defaults, short = defaults or {}, short or {}
    for name in names:
        f = BY_NAME[name]
        dest = (f.alias or f.name).replace("-", "_")
        default = defaults.get(name)
        flags = [short[name], f.flag] if name in short else [f.flag]
        if f.dtype is DType.BOOL:
            parser.add_argument(*flags, dest=dest, action="store_true", default=default, help=f.doc)
            continue
        shown = "" if default is None else f"; default {default}"
        allowed = f.requirement().replace("%", "%%")
        if f.is_list:
            parser.add_argument(
                *flags,
                dest=dest,
                action="append",
                type=str if f.dtype is DType.BYTES else cli_type(f),
                default=default,
                help=f"{f.doc} Repeat for several (at most {f.max_items}). Allowed: {allowed}",
            )
        else:
            parser.add_argument(
                *flags,
                dest=dest,
                type=cli_type(f),
                default=default,
                help=f"{f.doc} Allowed: {allowed}{shown}",
            )
