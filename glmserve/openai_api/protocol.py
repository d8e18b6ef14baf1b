"""OpenAI requests -> a decoder request: the parameter table, validation, the prompt.

:data:`PARAMS` is the one table that maps OpenAI's parameter names onto the request
contract's fields (glmserve/contract.py); values are checked by ``Field.check`` of
that contract, and its errors are renamed to the OpenAI name the client used. What the
server reads itself is in :data:`SERVER_PARAMS`; what it refuses (instead of ignoring)
in :data:`REFUSED`; any other name is refused as unknown.

Chat prompt (ChatGLM-6B has no system role): the leading ``system``/``developer``
messages, joined by newlines, go before the first round, followed by a newline; the
rest must alternate user/assistant and end with a user message. The user/assistant
pairs are the history of ``ChatGLMTokenizer.build_prompt`` (the prompt builder the
``preprocessing`` model uses), the last user message its query::

    [system + "\\n"] + build_prompt(query, [(user, assistant), ...])

so with no history the prompt is the (system text and the) query alone, and with history
it is ``[Round 0]\\n问：...\\n答：...\\n[Round 1]\\n问：{query}\\n答：``.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from glmserve import contract
from glmserve.contract import RequestError
from glmserve.openai_api.errors import APIError, invalid, model_not_found, unsupported
from glmserve.tokenizer import ChatGLMTokenizer

CHAT = "chat"
COMPLETIONS = "completions"
BOTH = frozenset({CHAT, COMPLETIONS})

# OpenAI's defaults where they differ from the contract's (greedy, seed 0).
DEFAULT_TEMPERATURE = 1.0
DEFAULT_COMPLETION_MAX_TOKENS = 16  # /v1/completions; chat: the room left in the context


def _as_list(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


@dataclass(frozen=True)
class Param:
    """One OpenAI parameter that sets a request-contract field."""

    name: str  # OpenAI's name
    field: str  # the contract field (glmserve.contract.FIELDS)
    endpoints: frozenset[str] = BOTH
    convert: Callable[[Any], Any] | None = None  # OpenAI's value -> the field's
    extension: bool = False  # not OpenAI's own: vLLM's name for one of our controls
    note: str = ""  # for the docs: defaults that differ from the contract's, forms

    @property
    def contract_field(self) -> contract.Field:
        return contract.field(self.field)


_MAX_TOKENS_NOTE = "default: chat, all the room the context leaves; completions, 16 (OpenAI's)"
PARAMS: tuple[Param, ...] = (
    Param("max_tokens", "max_tokens", note=_MAX_TOKENS_NOTE),
    Param("max_completion_tokens", "max_tokens", frozenset({CHAT}), note="as max_tokens"),
    Param("temperature", "temperature", note="default 1 (OpenAI's; the contract's is 0)"),
    Param("top_p", "top_p"),
    Param("n", "n", note="n > 1 needs temperature > 0"),
    Param("seed", "random_seed", note="default: a fresh random seed per request"),
    Param("stop", "stop", convert=_as_list, note="a string or a list of strings"),
    Param("presence_penalty", "presence_penalty"),
    Param("frequency_penalty", "frequency_penalty"),
    Param("logprobs", "logprobs", frozenset({COMPLETIONS}), note="how many alternatives"),
    Param("top_logprobs", "logprobs", frozenset({CHAT}), note="needs logprobs: true"),
    Param("top_k", "top_k", extension=True),
    Param("repetition_penalty", "repetition_penalty", extension=True),
    Param("ignore_eos", "ignore_eos", extension=True),
    Param("stop_token_ids", "stop_token_ids", extension=True),
    Param("include_stop_str_in_output", "include_stop_str_in_output", extension=True),
)

SERVER_PARAMS: dict[str, tuple[frozenset[str], str]] = {
    "model": (BOTH, "must name a served model (GET /v1/models); else 404"),
    "messages": (frozenset({CHAT}), "the conversation; becomes ChatGLM's prompt (Chat prompt)"),
    "prompt": (frozenset({COMPLETIONS}), "one text prompt, used as it is"),
    "stream": (BOTH, "server-sent events in OpenAI's chunk format, ending with [DONE]"),
    "stream_options": (
        BOTH,
        "include_usage: a last chunk with the usage (needs stream); continuous_usage_stats "
        "(vLLM's extension): the usage so far in every chunk",
    ),
    "logprobs": (
        frozenset({CHAT}),
        "true: each token's log-probability (top_logprobs: how many alternatives)",
    ),
    "user": (BOTH, "accepted and logged with the request; does not change the output"),
    "safety_identifier": (BOTH, "accepted and logged like user"),
}


def _neutral_none(value: Any) -> bool:
    return value is None


def _neutral_empty(value: Any) -> bool:
    return value is None or value == {} or value == []


@dataclass(frozen=True)
class Refused:
    why: str
    neutral: Callable[[Any], bool] = _neutral_none  # values that ask for nothing
    accepted: str = "null"  # those values, for the docs


_NO_TOOLS = "ChatGLM-6B has no tool or function calling"
REFUSED: dict[str, Refused] = {
    "tools": Refused(_NO_TOOLS, _neutral_empty, "null, []"),
    "tool_choice": Refused(_NO_TOOLS, lambda v: v is None or v == "none", 'null, "none"'),
    "functions": Refused(_NO_TOOLS, _neutral_empty, "null, []"),
    "function_call": Refused(_NO_TOOLS, lambda v: v is None or v == "none", 'null, "none"'),
    "parallel_tool_calls": Refused(_NO_TOOLS),
    "response_format": Refused(
        "only plain text output; no JSON mode or schema",
        lambda v: v is None or v == {"type": "text"},
        'null, {"type": "text"}',
    ),
    "logit_bias": Refused("no logit bias in the decoder", _neutral_empty, "null, {}"),
    "audio": Refused("text only"),
    "modalities": Refused("text only", lambda v: v is None or v == ["text"], 'null, ["text"]'),
    "prediction": Refused("no predicted outputs"),
    "web_search_options": Refused("no web search"),
    "reasoning_effort": Refused("not a reasoning model"),
    "verbosity": Refused("not a reasoning model"),
    "service_tier": Refused(
        "one service tier", lambda v: v in (None, "auto", "default"), 'null, "auto", "default"'
    ),
    "store": Refused("completions are not stored", lambda v: v in (None, False), "null, false"),
    "metadata": Refused("completions are not stored", _neutral_empty, "null, {}"),
    "moderation": Refused("no moderation"),
    "prompt_cache_key": Refused("no prompt cache across requests"),
    "prompt_cache_options": Refused("no prompt cache across requests"),
    "prompt_cache_retention": Refused("no prompt cache across requests"),
    "suffix": Refused("no insertion (suffix) mode", lambda v: v in (None, ""), 'null, ""'),
    "echo": Refused("the prompt is not echoed", lambda v: v in (None, False), "null, false"),
    "best_of": Refused("no server-side ranking", accepted="null, the value of n"),
}

_STREAM_OPTIONS = ("include_usage", "continuous_usage_stats")
_REQUEST_PREFIX = re.compile(r"^request \d+: ")


@dataclass(frozen=True)
class ModelInfo:
    """What requests are checked against: the tokenizer and the model's limits."""

    names: tuple[str, ...]
    tokenizer: ChatGLMTokenizer
    limits: contract.Limits
    adapters: tuple[str, ...] = ()  # the checkpoint's prefix adapters (docs/adapters.md)

    @property
    def context(self) -> int:
        return int(self.limits.context or 2048)

    def served(self) -> tuple[str, ...]:
        """Every model name a request may use: each name, and ``name:adapter`` per adapter."""
        return self.names + tuple(f"{n}:{a}" for n in self.names for a in self.adapters)

    def adapter_of(self, name: str) -> str | None:
        """The adapter a served model name selects ("" for none); None: not served."""
        if name in self.names:
            return ""
        base, _, adapter = name.rpartition(":")
        return adapter if base in self.names and adapter in self.adapters else None


@dataclass
class Plan:
    """A validated OpenAI request, ready for chatglm_decoder."""

    endpoint: str
    model: str
    input_ids: list[int]
    fields: dict[str, Any]  # contract field -> value (every field the decoder gets)
    stream: bool = False
    include_usage: bool = False
    continuous_usage: bool = False  # vLLM's extension: the usage so far in every chunk
    user: str | None = None
    used: dict[str, str] = field(default_factory=dict)  # contract field -> OpenAI name used

    @property
    def n(self) -> int:
        return int(self.fields.get("n", 1))

    @property
    def logprobs(self) -> bool:
        return int(self.fields.get("logprobs", -1)) >= 0

    def upstream_body(self, stream: bool) -> dict[str, Any]:
        """The decoder's /generate_stream body (``stream``: one response per step)."""
        return {"input_ids": self.input_ids, **self.fields, "stream": stream}

    def param_of(self, field_name: str) -> str:
        """The OpenAI name behind a contract field (the one the client used, if any)."""
        if field_name in self.used:
            return self.used[field_name]
        for p in PARAMS:
            if p.field == field_name and self.endpoint in p.endpoints:
                return p.name
        return field_name

    def field_error(self, message: str) -> APIError | None:
        """400 for a decoder message that names a request field ("n: needs ..."), with the
        OpenAI name in ``param`` and in front of the message; None when it names none."""
        message = _REQUEST_PREFIX.sub("", message)  # the engine's "request 3: n > 1 ..."
        for f in sorted(contract.fields_of(contract.DECODER), key=lambda f: -len(f.name)):
            if message.startswith(f.name) and message[len(f.name) : len(f.name) + 1] in (":", " "):
                param = self.param_of(f.name)
                return invalid(param, param + message[len(f.name) :])
        return None


def _renamed(e: RequestError, name: str) -> APIError:
    message = str(e)
    if e.field and message.startswith(e.field):
        message = name + message[len(e.field) :]
    return invalid(name, message)


def _check_keys(body: Mapping[str, Any], endpoint: str) -> None:
    """Refuse unknown parameters and unsupported features (any value that asks for one)."""
    known = {p.name for p in PARAMS if endpoint in p.endpoints}
    known |= {k for k, (where, _) in SERVER_PARAMS.items() if endpoint in where}
    for key, value in body.items():
        if key in known:
            continue
        refused = REFUSED.get(key)
        if refused is None:
            raise invalid(
                key, f"Unrecognized request argument supplied: {key}", "unknown_parameter"
            )
        if key == "best_of":
            _check_best_of(body)
        elif not refused.neutral(value):
            raise unsupported(key, refused.why)


def _check_best_of(body: Mapping[str, Any]) -> None:
    best_of, n = body.get("best_of"), body.get("n")
    if best_of is None or best_of == (1 if n is None else n):
        return
    raise unsupported("best_of", REFUSED["best_of"].why)


def _text(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise invalid(name, f"{name} must be a string, got {type(value).__name__}")
    return value


def _message_text(content: Any, where: str) -> str:
    """A message's content: a string, or a list of text parts (joined by newlines)."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise invalid(f"{where}.content", f"{where}.content must be a string or a list of parts")
    texts = []
    for j, part in enumerate(content):
        name = f"{where}.content[{j}]"
        if not isinstance(part, dict) or "type" not in part:
            raise invalid(name, f"{name} must be an object with a type")
        if part["type"] != "text":
            raise unsupported(f"{name}.type", f"{part['type']!r} parts (only text)")
        texts.append(_text(part.get("text"), f"{name}.text"))
    return "\n".join(texts)


_MESSAGE_KEYS = {"role", "content"}
_ROLES = ("system", "developer", "user", "assistant")


def chat_prompt(messages: Any) -> str:
    """The ChatGLM prompt of an OpenAI ``messages`` list (rules in the module docstring)."""
    if not isinstance(messages, list) or not messages:
        raise invalid("messages", "messages must be a non-empty list of messages")
    system: list[str] = []
    turns: list[tuple[str, str]] = []  # (role, text) after the system messages
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise invalid(where, f"{where} must be an object with role and content")
        role = m.get("role")
        if role not in _ROLES:
            if role in ("tool", "function"):
                raise unsupported(f"{where}.role", f"{role!r} messages ({_NO_TOOLS})")
            raise invalid(f"{where}.role", f"{where}.role must be one of {', '.join(_ROLES)}")
        for key, value in m.items():
            if key not in _MESSAGE_KEYS and value is not None:
                raise unsupported(f"{where}.{key}", f"message field {key!r}")
        if "content" not in m or m["content"] is None:
            raise invalid(f"{where}.content", f"{where}.content is required")
        text = _message_text(m["content"], where)
        if role in ("system", "developer"):
            if turns:
                raise invalid(
                    f"{where}.role",
                    f"{where}: {role} messages must come before the first user message "
                    "(ChatGLM-6B has no system role; they go before the first round)",
                )
            system.append(text)
            continue
        expected = "user" if len(turns) % 2 == 0 else "assistant"
        if role != expected:
            raise invalid(
                f"{where}.role",
                f"{where}.role must be {expected!r}: after the system messages, user and "
                "assistant messages alternate, starting with user",
            )
        turns.append((role, text))
    if not turns or turns[-1][0] != "user":
        raise invalid("messages", "messages: the last message must be a user message")
    history = [(turns[k][1], turns[k + 1][1]) for k in range(0, len(turns) - 1, 2)]
    prompt = ChatGLMTokenizer.build_prompt(turns[-1][1], history)
    return "\n".join([*system, prompt])


def completion_prompt(prompt: Any) -> str:
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if isinstance(prompt, list):
        if prompt and all(isinstance(p, str) for p in prompt):
            raise unsupported("prompt", "one prompt per request (send the others separately)")
        raise unsupported("prompt", "token id arrays; send the prompt as text")
    return _text(prompt, "prompt")


def _sampling(body: Mapping[str, Any], endpoint: str, limits: contract.Limits) -> Plan:
    fields: dict[str, Any] = {}
    used: dict[str, str] = {}
    for p in PARAMS:
        if endpoint not in p.endpoints or body.get(p.name) is None:
            continue
        value = body[p.name]
        if p.convert is not None:
            value = p.convert(value)
        try:
            value = p.contract_field.check(value, limits)
        except RequestError as e:
            raise _renamed(e, p.name) from None
        if p.field in fields and fields[p.field] != value:
            raise invalid(p.name, f"{p.name} and {used[p.field]} differ: set only one of them")
        fields[p.field] = value
        used[p.field] = p.name
    return Plan(endpoint, "", [], fields, used=used)


def _chat_logprobs(body: Mapping[str, Any], plan: Plan) -> None:
    on = body.get("logprobs")
    if on is not None and not isinstance(on, bool):
        raise invalid("logprobs", "logprobs must be a boolean (true or false)")
    if not on:
        if "logprobs" in plan.fields:
            raise invalid("top_logprobs", "top_logprobs needs logprobs: true")
        return
    plan.fields.setdefault("logprobs", 0)


def _stream_options(body: Mapping[str, Any], plan: Plan) -> None:
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise invalid("stream", "stream must be a boolean (true or false)")
    plan.stream = bool(stream)
    options = body.get("stream_options")
    if options is None:
        return
    if not plan.stream:
        raise invalid("stream_options", "stream_options is only allowed when stream is true")
    if not isinstance(options, dict):
        raise invalid("stream_options", "stream_options must be an object")
    for key, value in options.items():
        name = f"stream_options.{key}"
        if key not in _STREAM_OPTIONS:
            raise invalid(
                name, f"Unrecognized request argument supplied: {name}", "unknown_parameter"
            )
        if value is not None and not isinstance(value, bool):
            raise invalid(name, f"{name} must be a boolean")
    plan.include_usage = bool(options.get("include_usage"))
    plan.continuous_usage = bool(options.get("continuous_usage_stats"))


def _user(body: Mapping[str, Any]) -> str | None:
    for key in ("user", "safety_identifier"):
        if body.get(key) is not None:
            return _text(body[key], key)
    return None


def _fill_defaults(plan: Plan, model: ModelInfo, prompt_field: str) -> None:
    n = len(plan.input_ids)
    room = model.context - n
    if room < 1:
        raise invalid(
            prompt_field,
            f"{prompt_field}: the prompt of {n} tokens leaves no room in the model's context "
            f"of {model.context} tokens",
            "context_length_exceeded",
        )
    f = plan.fields
    if "max_tokens" not in f:
        default = room if plan.endpoint == CHAT else DEFAULT_COMPLETION_MAX_TOKENS
        f["max_tokens"] = min(default, room)
    elif f["max_tokens"] > room:
        name = plan.param_of("max_tokens")
        raise invalid(
            name,
            f"{name}: the prompt of {n} tokens + {name} {f['max_tokens']} exceed the model's "
            f"context of {model.context} tokens (allowed for this prompt: [1, {room}])",
            "context_length_exceeded",
        )
    f.setdefault("temperature", DEFAULT_TEMPERATURE)
    if "random_seed" not in f:
        f["random_seed"] = secrets.randbits(63)


def _common(body: Any, endpoint: str, model: ModelInfo) -> Plan:
    if not isinstance(body, dict):
        raise invalid(None, "the request body must be a JSON object")
    name = body.get("model")
    if name is None:
        raise invalid("model", "model is required")
    _text(name, "model")
    _check_keys(body, endpoint)
    adapter = model.adapter_of(name)
    if adapter is None:
        raise model_not_found(name, list(model.served()))
    plan = _sampling(body, endpoint, model.limits)
    plan.model = name
    if adapter:
        plan.fields["adapter"] = adapter
    _stream_options(body, plan)
    plan.user = _user(body)
    return plan


def chat_request(body: Any, model: ModelInfo) -> Plan:
    """A /v1/chat/completions body -> its plan, or APIError (400 naming the parameter, 404)."""
    plan = _common(body, CHAT, model)
    _chat_logprobs(body, plan)
    if "messages" not in body:
        raise invalid("messages", "messages is required")
    plan.input_ids = model.tokenizer.encode(chat_prompt(body["messages"]))
    _fill_defaults(plan, model, "messages")
    return plan


def completion_request(body: Any, model: ModelInfo) -> Plan:
    """A /v1/completions body -> its plan, or APIError."""
    plan = _common(body, COMPLETIONS, model)
    if "prompt" not in body:
        raise invalid("prompt", "prompt is required")
    plan.input_ids = model.tokenizer.encode(completion_prompt(body["prompt"]))
    _fill_defaults(plan, model, "prompt")
    return plan


def params_markdown() -> str:
    """The parameter table of docs/openai.md (a test keeps the page in step with it)."""
    rows = ["| OpenAI parameter | endpoints | request-contract field | note |", "|---|---|---|---|"]

    def where(endpoints: frozenset[str]) -> str:
        return "both" if endpoints == BOTH else next(iter(endpoints))

    for p in PARAMS:
        note = "extension (vLLM's name)" if p.extension else p.note
        rows.append(f"| `{p.name}` | {where(p.endpoints)} | `{p.field}` | {note} |")
    for name, (endpoints, note) in SERVER_PARAMS.items():
        rows.append(f"| `{name}` | {where(endpoints)} | (server) | {note} |")
    return "\n".join(rows)


def refused_markdown() -> str:
    rows = ["| refused parameter | why | values accepted (they ask for nothing) |", "|---|---|---|"]
    rows += [f"| `{k}` | {r.why} | `{r.accepted}` |" for k, r in REFUSED.items()]
    return "\n".join(rows)
