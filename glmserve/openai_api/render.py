"""Decoder responses -> OpenAI's objects: completions, chat completions and their chunks.

:class:`Renderer` keeps one :class:`Choice` per index; ``feed(response)`` turns one
decoder response into the text (``glmserve.decoder_output.response_text``: decode_delta,
then the stop string's trim_bytes cut on the choice's last piece) and log-probabilities of
that choice, and returns the stream chunks for it. ``result()`` is the non-streamed
object, ``usage()`` the usage: prompt tokens once, completion tokens summed over the
choices, as the decoder counted them.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from glmserve.decoder_output import TokenTable, logprob_entries, response_text
from glmserve.openai_api.protocol import CHAT, Plan
from glmserve.openai_api.upstream import DecoderResponse
from glmserve.tokenizer import DECODE_CONTEXT, ChatGLMTokenizer


@dataclass
class Choice:
    index: int
    parts: list[str] = field(default_factory=list)
    tokens: int = 0
    finish_reason: str | None = None
    logprobs: list[dict[str, Any]] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)  # completions' text_offset per token
    window: list[int] = field(default_factory=list)  # the last ids (for the offsets)
    chars: int = 0  # characters of text the ids so far stand for

    @property
    def text(self) -> str:
        return "".join(self.parts)


def _chat_logprob(entry: dict[str, Any]) -> dict[str, Any]:
    return {
        "token": entry["token"],
        "logprob": entry["logprob"],
        "bytes": entry["bytes"],
        "top_logprobs": [
            {"token": t["token"], "logprob": t["logprob"], "bytes": t["bytes"]}
            for t in entry["top_logprobs"]
        ],
    }


def completion_logprobs(entries: list[dict[str, Any]], offsets: list[int]) -> dict[str, Any]:
    """The legacy completions format (``text_offset``: where each token's text begins in
    the choice's text; a character made of several byte tokens counts at the last one)."""
    return {
        "tokens": [e["token"] for e in entries],
        "token_logprobs": [e["logprob"] for e in entries],
        "top_logprobs": [{t["token"]: t["logprob"] for t in e["top_logprobs"]} for e in entries],
        "text_offset": list(offsets),
    }


class Renderer:
    """The OpenAI objects of one request (``plan``), fed with its decoder responses."""

    def __init__(self, plan: Plan, tokenizer: ChatGLMTokenizer, table: TokenTable) -> None:
        self.plan = plan
        self.tokenizer = tokenizer
        self.table = table
        self.chat = plan.endpoint == CHAT
        prefix = "chatcmpl" if self.chat else "cmpl"
        self.id = f"{prefix}-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.object = "chat.completion" if self.chat else "text_completion"
        self.choices = [Choice(i) for i in range(plan.n)]
        self.prompt_tokens = len(plan.input_ids)

    @property
    def done(self) -> bool:
        return all(c.finish_reason is not None for c in self.choices)

    def usage(self) -> dict[str, int]:
        completion = sum(c.tokens for c in self.choices)
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": self.prompt_tokens + completion,
        }

    # -- one decoder response -------------------------------------------------------
    def _apply(self, r: DecoderResponse) -> tuple[Choice, str, list[dict[str, Any]]]:
        if not 0 <= r.index < len(self.choices):
            raise ValueError(
                f"the decoder sent choice {r.index} of a request for {len(self.choices)}"
            )
        choice = self.choices[r.index]
        if choice.finish_reason is not None:
            raise ValueError(f"the decoder sent choice {r.index} after its last response")
        text = response_text(self.tokenizer, r.prev_ids, r.output_ids, r.is_final, r.trim_bytes)
        entries: list[dict[str, Any]] = []
        if self.plan.logprobs and r.logprobs is not None:
            entries = logprob_entries(
                self.table, r.output_ids, r.logprobs, r.top_ids, r.top_logprobs
            )
            if not self.chat:
                self._offsets(choice, r.output_ids)
        choice.parts.append(text)
        choice.logprobs.extend(entries)
        # the decoder counts the choice's tokens so far; without it, count the ids
        choice.tokens = r.completion_tokens or choice.tokens + len(r.output_ids)
        if r.prompt_tokens:
            self.prompt_tokens = r.prompt_tokens
        if r.is_final:
            choice.finish_reason = r.finish_reason or "stop"
        return choice, text, entries

    def _offsets(self, choice: Choice, ids: list[int]) -> None:
        """text_offset of each id: the characters the ids before it decode to (streamed
        decoding over the last DECODE_CONTEXT ids, as the decoder's prev_ids)."""
        for i in ids:
            choice.offsets.append(choice.chars)
            choice.chars += len(self.tokenizer.decode_delta(choice.window, [i], False))
            choice.window = (choice.window + [i])[-DECODE_CONTEXT:]

    def feed(self, r: DecoderResponse) -> list[dict[str, Any]]:
        """The stream chunks for one decoder response: its text (when there is text or
        log-probabilities), then, on the choice's last response, the finish chunk."""
        choice, text, entries = self._apply(r)
        chunks = []
        if text or entries:
            offsets = choice.offsets[len(choice.offsets) - len(entries) :] if entries else []
            chunks.append(self._chunk(choice.index, text, entries, offsets))
        if choice.finish_reason is not None:
            chunks.append(self._finish_chunk(choice))
        return chunks

    def _chunk(
        self, index: int, text: str, entries: list[dict[str, Any]], offsets: list[int]
    ) -> dict[str, Any]:
        logprobs = None
        if self.plan.logprobs:
            if self.chat:
                logprobs = {"content": [_chat_logprob(e) for e in entries]}
            else:
                logprobs = completion_logprobs(entries, offsets)
        if self.chat:
            choice = {"index": index, "delta": {"content": text}, "logprobs": logprobs}
        else:
            choice = {"index": index, "text": text, "logprobs": logprobs}
        choice["finish_reason"] = None
        return self._envelope([choice])

    def _finish_chunk(self, choice: Choice) -> dict[str, Any]:
        if self.chat:
            body = {"index": choice.index, "delta": {}, "logprobs": None}
        else:
            body = {"index": choice.index, "text": "", "logprobs": None}
        body["finish_reason"] = choice.finish_reason
        return self._envelope([body])

    def _envelope(self, choices: list[dict[str, Any]]) -> dict[str, Any]:
        obj = {
            "id": self.id,
            "object": "chat.completion.chunk" if self.chat else "text_completion",
            "created": self.created,
            "model": self.plan.model,
            "choices": choices,
        }
        if self.plan.continuous_usage:
            obj["usage"] = self.usage()
        elif self.plan.include_usage:
            obj["usage"] = None
        return obj

    def role_chunks(self) -> list[dict[str, Any]]:
        """Chat streams open each choice with its role (OpenAI's first chunk)."""
        if not self.chat:
            return []
        return [
            self._envelope(
                [
                    {
                        "index": c.index,
                        "delta": {"role": "assistant", "content": ""},
                        "logprobs": None,
                        "finish_reason": None,
                    }
                ]
            )
            for c in self.choices
        ]

    def usage_chunk(self) -> dict[str, Any]:
        """stream_options.include_usage: the last chunk, no choices, the usage."""
        obj = self._envelope([])
        obj["usage"] = self.usage()
        return obj

    # -- the whole answer (not streamed) -------------------------------------------------
    def add(self, r: DecoderResponse) -> None:
        self._apply(r)

    def result(self) -> dict[str, Any]:
        choices = []
        for c in self.choices:
            logprobs = None
            if self.plan.logprobs:
                if self.chat:
                    logprobs = {"content": [_chat_logprob(e) for e in c.logprobs]}
                else:
                    logprobs = completion_logprobs(c.logprobs, c.offsets)
            if self.chat:
                body = {"index": c.index, "message": {"role": "assistant", "content": c.text}}
            else:
                body = {"index": c.index, "text": c.text}
            body["logprobs"] = logprobs
            body["finish_reason"] = c.finish_reason
            choices.append(body)
        return {
            "id": self.id,
            "object": self.object,
            "created": self.created,
            "model": self.plan.model,
            "choices": choices,
            "usage": self.usage(),
        }
