"""The OpenAI transport of the load tests: streamed chat completions, timed token by token.

``OpenAIStream.send(Request)`` posts one ``/v1/chat/completions`` request with
``stream: true`` to the OpenAI-compatible server (``python -m glmserve.openai_api``) on a
kept-alive connection and records it as a :class:`load_tests.stats.Record`, like
``load_tests.streaming.Stream`` does for Triton's gRPC stream. The request asks for the
same work as the gRPC user's: greedy decoding, ``max_tokens`` and ``ignore_eos`` of the
workload, earlier turns as user/assistant messages (the server builds ChatGLM's
``[Round i]`` prompt from them, as the ensemble does from ``history``).

Tokens: ``stream_options.continuous_usage_stats`` (vLLM's extension, which the server
supports) puts the usage so far into every chunk; a chunk carries as many tokens as
``completion_tokens`` grew, all timed at its arrival (merged steps give gaps of 0, as on
gRPC). Against a server without it, each chunk with text counts as one token and the
final usage's remainder goes to the last chunk.

``python -m load_tests.openai_stream --check URL`` exits 1 with one line when no
OpenAI-compatible server answers there.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any

from client._http import split_host_port
from client.sse import iter_sse_data
from load_tests.stats import Record
from load_tests.workload import Request

API_KEY_ENV = "GLM_OPENAI_API_KEY"
DEFAULT_PORT = 9000


class OpenAIError(Exception):
    """The server refused or failed the request (its error message)."""


def messages(req: Request) -> list[dict[str, str]]:
    """The conversation of one workload request: earlier turns, then the prompt."""
    if not isinstance(req.prompt, str):
        raise ValueError("the OpenAI API takes text prompts, not prompt ids")
    out: list[dict[str, str]] = []
    for question, answer in req.history or []:
        out += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return [*out, {"role": "user", "content": req.prompt}]


def chat_body(req: Request, model: str, logprobs: bool = False) -> dict[str, Any]:
    """The streamed chat request of `req`. `logprobs`: ask for each token's log-probability,
    so that every token gets its chunk even when its text is empty or held back (a random
    model's ids mostly decode to nothing: without them the stream's first chunk, and so its
    TTFT, comes at the end)."""
    body = {
        "model": model,
        "messages": messages(req),
        "max_tokens": req.max_tokens,
        "temperature": 0,
        "ignore_eos": req.ignore_eos,
        "stream": True,
        "stream_options": {"include_usage": True, "continuous_usage_stats": True},
    }
    if logprobs:
        body["logprobs"] = True
    return body


def _error_text(raw: bytes, status: int) -> str:
    try:
        err = json.loads(raw)["error"]
        return f"HTTP {status}: {err.get('message', err)}"
    except (ValueError, KeyError, TypeError, AttributeError):
        return f"HTTP {status}: {raw[:200].decode('utf-8', errors='replace')}"


class OpenAIStream:
    """One request at a time on one kept-alive connection (one per thread or Locust user)."""

    def __init__(
        self,
        url: str,
        model: str | None = None,
        api_key: str | None = None,
        timeout: float = 600.0,
        logprobs: bool = False,
    ) -> None:
        self.host, self.port = split_host_port(url, DEFAULT_PORT)
        self.logprobs = logprobs
        self.api_key = api_key if api_key is not None else os.environ.get(API_KEY_ENV)
        self.timeout = timeout
        self._conn: http.client.HTTPConnection | None = None
        self.model = model or self.models()[0]
        self.tokens_seen = 0
        self.current: Record | None = None

    def _headers(self) -> dict[str, str]:
        h = {"Content-Type": "application/json"}
        if self.api_key:
            h["Authorization"] = f"Bearer {self.api_key}"
        return h

    def _request(self, method: str, path: str, body: bytes | None = None) -> Any:
        if self._conn is None:
            self._conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        try:
            self._conn.request(method, path, body=body, headers=self._headers())
            return self._conn.getresponse()
        except (OSError, http.client.HTTPException):
            self.close()
            raise

    def models(self) -> list[str]:
        """The served model ids (GET /v1/models)."""
        resp = self._request("GET", "/v1/models")
        raw = resp.read()
        if resp.status != 200:
            raise OpenAIError(_error_text(raw, resp.status))
        return [m["id"] for m in json.loads(raw)["data"]]

    def chunks(self, req: Request) -> Iterator[tuple[float, dict[str, Any]]]:
        """The stream's chunks (parsed JSON) with their arrival times; raises OpenAIError."""
        resp = self._request(
            "POST",
            "/v1/chat/completions",
            json.dumps(chat_body(req, self.model, self.logprobs)).encode(),
        )
        if resp.status != 200:
            raw = resp.read()
            raise OpenAIError(_error_text(raw, resp.status))
        for data in iter_sse_data(resp):
            if data == "[DONE]":
                break
            obj = json.loads(data)
            if "error" in obj:
                raise OpenAIError(_error_text(data.encode(), 200))
            yield time.perf_counter(), obj
        resp.read()  # the end of the chunked body: the connection can be reused

    def send(self, req: Request) -> Record:
        """Send ``req`` and wait for its end; failures end up in the record's ``error``."""
        rec = Record(start=time.perf_counter(), expected=req.expected, index=req.index)
        self.current = rec
        pieces: list[str] = []
        counted = 0
        try:
            for t, chunk in self.chunks(req):
                text = "".join(
                    (c.get("delta") or {}).get("content") or "" for c in chunk["choices"]
                )
                pieces.append(text)
                usage = chunk.get("usage")
                total = usage["completion_tokens"] if usage else counted + (1 if text else 0)
                rec.token_times.extend([t] * (total - counted))
                self.tokens_seen += max(0, total - counted)
                counted = max(counted, total)
        except (OpenAIError, OSError, http.client.HTTPException, ValueError) as exc:
            rec.error = str(exc) or type(exc).__name__
            self.close()
        rec.end = time.perf_counter()
        rec.text = "".join(pieces)
        self.current = None
        return rec

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def server_problem(url: str, api_key: str | None = None) -> str | None:
    """Why no OpenAI-compatible server can be load-tested at ``url``, or None."""
    try:
        s = OpenAIStream(url, api_key=api_key, timeout=10)
        s.close()
    except (OpenAIError, OSError, http.client.HTTPException, ValueError, IndexError) as exc:
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:160]
        return f"no OpenAI-compatible server at {url} ({first})"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m load_tests.openai_stream",
        description="Check that an OpenAI-compatible server answers (exit 1 with one line if not).",
    )
    p.add_argument("--check", metavar="URL", required=True, help="the server's host:port")
    p.add_argument("--prefix", default="", help="put before the message when the check fails")
    p.add_argument("--hint", default="", help="put after the message when the check fails")
    args = p.parse_args(argv)
    problem = server_problem(args.check)
    if problem is None:
        return 0
    print(f"{args.prefix}{problem}{args.hint}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
