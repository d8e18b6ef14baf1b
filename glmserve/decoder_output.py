"""Text and log-probabilities of one ``chatglm_decoder`` response, as plain Python.

A decoder response carries ONE choice's new ids (``output_ids``), up to 16 ids of that
choice generated right before them (``prev_ids``) and ``is_final`` (the choice's last
response); on a stop, ``trim_bytes`` says how many bytes to cut from the end of the
choice's text; with ``logprobs`` on, ``output_logprobs`` [k] and ``top_logprob_ids`` /
``top_logprobs`` [k, N] (docs/architecture.md, "Decoder streaming contract").

- :func:`response_text`: the text of one response. Stateless: the pieces of a choice
  concatenate to exactly ``decode(all ids)``, less the trimmed stop string.
- :class:`TokenTable` and :func:`logprob_entries`: one entry per generated token,
  ``{"id", "token", "bytes", "logprob", "top_logprobs": [{"id", "token", "bytes",
  "logprob"}]}`` (``token``: the id's own decoded text; ``bytes``: its UTF-8 or
  byte-fallback bytes as a list of ints).

These are the steps the ``postprocessing`` model performs (model_repository/
postprocessing/1/model.py); both the OpenAI-compatible server and that model can call
them, so that the text of a response is defined once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from glmserve.tokenizer import ChatGLMTokenizer


def response_text(
    tokenizer: ChatGLMTokenizer,
    prev_ids: Sequence[int],
    output_ids: Sequence[int],
    is_final: bool,
    trim_bytes: int = 0,
) -> str:
    """The text of one decoder response (``decode_delta``), with ``trim_bytes`` cut from
    the end of a choice's last piece. The engine cuts on the same token texts; a cut that
    would split a character (only where the decoder repaired bytes) drops it whole."""
    text = tokenizer.decode_delta(prev_ids, output_ids, is_final)
    if not is_final or trim_bytes <= 0:
        return text
    data = text.encode("utf-8")
    keep = max(0, len(data) - trim_bytes)
    return data[:keep].decode("utf-8", errors="ignore")


class TokenTable:
    """Per id: its own text (``decode([id])``) and bytes, computed once and cached."""

    def __init__(self, tokenizer: ChatGLMTokenizer) -> None:
        self.tokenizer = tokenizer
        self._bytes = [data for _, data in tokenizer.token_texts()]
        self._cache: dict[int, dict[str, Any]] = {}

    def token(self, i: int) -> dict[str, Any]:
        """``{"id", "token", "bytes"}`` of one id (ids outside the vocabulary: no text)."""
        found = self._cache.get(i)
        if found is None:
            raw = self._bytes[i] if 0 <= i < len(self._bytes) else b""
            found = {"id": i, "token": self.tokenizer.decode([i]), "bytes": list(raw)}
            self._cache[i] = found
        return found


def logprob_entries(
    table: TokenTable,
    ids: Sequence[int],
    logprobs: Sequence[float],
    top_ids: Sequence[Sequence[int]] | None = None,
    top_logprobs: Sequence[Sequence[float]] | None = None,
) -> list[dict[str, Any]]:
    """One entry per generated id: its token, bytes and log-probability, and the most likely
    alternatives (``top_ids`` / ``top_logprobs``, one row per id; None or empty rows: none)."""
    if len(logprobs) != len(ids):
        raise ValueError(f"{len(ids)} output ids but {len(logprobs)} log-probabilities")
    entries = []
    for t, token_id in enumerate(ids):
        alternatives: list[dict[str, Any]] = []
        if top_ids is not None and top_logprobs is not None and t < len(top_ids):
            alternatives = [
                {**table.token(int(a)), "logprob": float(b)}
                for a, b in zip(top_ids[t], top_logprobs[t], strict=True)
            ]
        entry = {**table.token(int(token_id)), "logprob": float(logprobs[t])}
        entry["top_logprobs"] = alternatives
        entries.append(entry)
    return entries
