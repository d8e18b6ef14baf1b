"""``ChatGLMClient``: generation and streaming against the ``chatglm`` ensemble."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ._http import split_host_port
from .errors import ClientError
from .params import MODEL_NAME, Chunk, Completion, History, build_generate_body, build_tensors

PROTOCOLS = ("grpc", "http")
DEFAULT_PORTS = {"grpc": 8001, "http": 8000}


def default_url(protocol: str) -> str:
    return f"127.0.0.1:{DEFAULT_PORTS[protocol]}"


class ChatGLMClient:
    """A client of the ChatGLM Triton server.

    ``url`` is ``host:port`` (a leading ``http://`` or ``grpc://`` is accepted);
    ``protocol`` is ``"grpc"`` (Triton's gRPC stream) or ``"http"`` (the generate
    endpoints). Sampling keyword arguments: the optional request fields of
    docs/request_fields.md (``max_tokens``, ``temperature``, ``top_k``, ``top_p``,
    ``repetition_penalty``, ``presence_penalty``, ``frequency_penalty``, ``random_seed``
    (or ``seed``), ``ignore_eos``, ``n``, ``logprobs``, ``stop`` (a string or a list),
    ``stop_token_ids``, ``include_stop_str_in_output``); leave them out for the server's
    defaults (greedy decoding). ``history`` is a list of ``(question, answer)`` pairs.
    :meth:`complete` returns every choice with its finish reason, log-probabilities
    and the usage; :meth:`generate` only the text of a single choice.

    Errors raise :class:`client.ClientError` (the server's message), or its subclass
    :class:`client.ServerUnavailable` when the server cannot be reached.
    """

    def __init__(
        self,
        url: str | None = None,
        protocol: str = "grpc",
        model: str = MODEL_NAME,
        timeout: float | None = 600.0,
    ) -> None:
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
        self.protocol = protocol
        host, port = split_host_port(url or default_url(protocol), DEFAULT_PORTS[protocol])
        self.url = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.model = model
        self._transport: Any
        if protocol == "grpc":
            from ._grpc import GrpcTransport

            self._transport = GrpcTransport(self.url, model, timeout)
        else:
            from ._http import HttpTransport

            self._transport = HttpTransport(self.url, model, timeout)

    def complete(self, prompt: str, history: History | None = None, **sampling: Any) -> Completion:
        """Every choice of the reply to ``prompt`` (``n`` of them) with its finish reason
        and log-probabilities, and the usage. Streamed under the hood, so it works for
        ``n > 1`` over both protocols."""
        return Completion.collect(self.stream_chunks(prompt, history, **sampling))

    def generate(self, prompt: str, history: History | None = None, **sampling: Any) -> str:
        """The whole reply to ``prompt`` (non-streamed request; one choice)."""
        if sampling.get("n") not in (None, 1):
            raise ValueError("generate() returns one text: use complete() for n > 1")
        if self.protocol == "http":
            body = build_generate_body(prompt, history, sampling, stream=False)
            return self._transport.generate(body)
        tensors = build_tensors(prompt, history, sampling, stream=False)
        return "".join(self._transport.stream(tensors))

    def stream(self, prompt: str, history: History | None = None, **sampling: Any) -> Iterator[str]:
        """Yield the reply's text deltas as the server produces them.

        Usually one delta per generated token step, but one delta may cover several
        tokens (the server merges steps when it is behind), so count tokens with
        :meth:`stream_chunks`, not by counting deltas. A delta may be empty when
        the server holds back an incomplete character. The deltas concatenate to
        the text :meth:`generate` returns. Arguments are checked before the
        generator is returned.
        """
        if self.protocol == "http":
            body = build_generate_body(prompt, history, sampling, stream=True)
            return self._transport.stream(body)
        tensors = build_tensors(prompt, history, sampling, stream=True)
        return self._transport.stream(tensors)

    def stream_chunks(
        self, prompt: str, history: History | None = None, **sampling: Any
    ) -> Iterator[Chunk]:
        """Like :meth:`stream`, but yield :class:`Chunk` ``(text, tokens)`` pairs:
        ``tokens`` is the response's ``token_count`` output (1 when the server does not
        send it); their sum is the number of tokens generated."""
        if self.protocol == "http":
            body = build_generate_body(prompt, history, sampling, stream=True)
            return self._transport.chunks(body)
        tensors = build_tensors(prompt, history, sampling, stream=True)
        return self._transport.chunks(tensors)

    def chat(
        self,
        query: str,
        history: list[tuple[str, str]] | None = None,
        **sampling: Any,
    ) -> tuple[str, list[tuple[str, str]]]:
        """One chat turn: the reply and the history extended by ``(query, reply)``."""
        history = list(history or [])
        reply = self.generate(query, history=history, **sampling)
        return reply, [*history, (query, reply)]

    def close(self) -> None:
        self._transport.close()

    def __enter__(self) -> ChatGLMClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["ChatGLMClient", "Chunk", "ClientError", "default_url", "PROTOCOLS"]
