"""The Triton side: ``chatglm_decoder`` over HTTP ``/generate_stream`` (SSE), with aiohttp.

One :class:`DecoderStream` per request. Its events are the decoder's responses, one
choice's new ids each (:class:`DecoderResponse`). :meth:`DecoderStream.close` before the
end closes the TCP connection, and Triton 2.51 then cancels the decoder request (the
backend frees its KV blocks at the next engine step). This path needs neither the gRPC
stream cancellation (which can crash 2.51's gRPC front end) nor ensemble cancellation
(which 2.51 does not pass on), see docs/openai.md "Disconnects".

Errors: :class:`UpstreamError` with the message, and the HTTP status when Triton refused
the request before streaming (streamed errors have none in 2.51).
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

DECODER = "chatglm_decoder"


class UpstreamError(Exception):
    """Triton refused or failed a request (``status`` None: an error event of the stream,
    or Triton could not be reached: ``unreachable``)."""

    def __init__(self, message: str, status: int | None = None, unreachable: bool = False):
        super().__init__(message)
        self.message = message
        self.status = status
        self.unreachable = unreachable


def _ints(value: Any) -> list[int]:
    """A JSON output of Triton's generate endpoints: a bare number for one element."""
    if value is None:
        return []
    if isinstance(value, list):
        return [int(v) for v in value]
    return [int(value)]


def _floats(value: Any) -> list[float]:
    if value is None:
        return []
    if isinstance(value, list):
        return [float(v) for v in value]
    return [float(value)]


def _rows(flat: list[Any], k: int) -> list[list[Any]]:
    """A [k, N] output flattened to a list -> k rows."""
    if k == 0 or not flat:
        return [[] for _ in range(k)]
    if len(flat) % k:
        raise ValueError(f"{len(flat)} values do not split into {k} rows")
    width = len(flat) // k
    return [flat[r * width : (r + 1) * width] for r in range(k)]


def _scalar(value: Any, default: Any) -> Any:
    if isinstance(value, list):
        return value[0] if value else default
    return default if value is None else value


@dataclass
class DecoderResponse:
    """One response of chatglm_decoder: one choice's new ids and its state."""

    output_ids: list[int]
    prev_ids: list[int] = field(default_factory=list)
    is_final: bool = False
    index: int = 0
    finish_reason: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    trim_bytes: int = 0
    logprobs: list[float] | None = None
    top_ids: list[list[int]] | None = None
    top_logprobs: list[list[float]] | None = None

    @classmethod
    def from_event(cls, obj: dict[str, Any]) -> DecoderResponse:
        ids = _ints(obj.get("output_ids"))
        out = cls(
            ids,
            _ints(obj.get("prev_ids")),
            bool(_scalar(obj.get("is_final"), False)),
            int(_scalar(obj.get("index"), 0)),
            str(_scalar(obj.get("finish_reason"), "")),
            int(_scalar(obj.get("prompt_tokens"), 0)),
            int(_scalar(obj.get("completion_tokens"), 0)),
            int(_scalar(obj.get("trim_bytes"), 0)),
        )
        if "output_logprobs" in obj:
            out.logprobs = _floats(obj["output_logprobs"])
            out.top_ids = [
                [int(v) for v in r] for r in _rows(_ints(obj.get("top_logprob_ids")), len(ids))
            ]
            out.top_logprobs = _rows(_floats(obj.get("top_logprobs")), len(ids))
        return out


class SSEParser:
    """Incremental server-sent events: ``feed(bytes)`` -> the ``data`` of each complete
    event (``data:`` lines joined by newlines; other fields and comments ignored)."""

    def __init__(self) -> None:
        self._buf = b""
        self._data: list[bytes] = []

    def feed(self, chunk: bytes) -> list[bytes]:
        self._buf += chunk
        events = []
        while True:
            end = self._buf.find(b"\n")
            if end < 0:
                return events
            line = self._buf[:end].rstrip(b"\r")
            self._buf = self._buf[end + 1 :]
            if not line:
                if self._data:
                    events.append(b"\n".join(self._data))
                    self._data = []
            elif line.startswith(b"data:"):
                value = line[5:]
                self._data.append(value[1:] if value.startswith(b" ") else value)

    def end(self) -> list[bytes]:
        """Whatever event the stream ended without its blank line."""
        tail = self.feed(b"\n\n") if self._buf or self._data else []
        return tail


def error_message(raw: bytes) -> str:
    """Triton's ``{"error": "..."}`` body, plain or as one event (2.51 answers an error
    of the decoder's first response with 400 and ``data: {"error": ...}``), or the text."""
    text = raw.decode("utf-8", errors="replace").strip()
    parser = SSEParser()
    events = parser.feed(raw) + parser.end() if text.startswith("data:") else [raw]
    for data in events:
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError:
            continue
        if isinstance(obj, dict) and "error" in obj:
            return str(obj["error"])
    return text or "no message"


class DecoderStream:
    """One open /generate_stream request: ``async for response in stream``.

    ``close()`` ends it; before the end that closes the connection, which cancels the
    decoder request in Triton.
    """

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response
        self._parser = SSEParser()
        self._pending: collections.deque[DecoderResponse] = collections.deque()
        self._eof = False
        self._error: UpstreamError | None = None
        self.closed = False
        self.responses = 0  # events read (for diagnostics)
        self.last_event = b""

    def __aiter__(self) -> DecoderStream:
        return self

    async def __anext__(self) -> DecoderResponse:
        while not self._pending:
            if self._error is not None:
                raise self._error
            if self._eof:
                raise StopAsyncIteration
            try:
                chunk = await self._response.content.readany()
            except aiohttp.ClientError as exc:
                raise UpstreamError(f"connection to the inference server lost: {exc}") from None
            if chunk:
                events = self._parser.feed(chunk)
            else:
                self._eof = True
                events = self._parser.end()
            try:
                for data in events:
                    self._add(data)
            except UpstreamError as e:  # after the responses that came before it
                self._error = e
        return self._pending.popleft()

    def _add(self, data: bytes) -> None:
        self.responses += 1
        self.last_event = data
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise UpstreamError(
                f"malformed event from the inference server: {data[:200]!r}"
            ) from None
        if not isinstance(obj, dict):
            raise UpstreamError(f"malformed event from the inference server: {data[:200]!r}")
        if "error" in obj:
            raise UpstreamError(str(obj["error"]))
        if "output_ids" not in obj:
            return  # an empty response (only the final flag): nothing to render
        try:
            self._pending.append(DecoderResponse.from_event(obj))
        except (TypeError, ValueError) as exc:
            raise UpstreamError(f"malformed event from the inference server: {exc}") from None

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._eof:
            self._response.release()
        else:
            self._response.close()  # mid-stream: drop the connection -> Triton cancels


class Triton:
    """Client of one Triton server's HTTP endpoint (``host:port`` or ``http://host:port``).

    The aiohttp session is made on first use, inside the running event loop, with no
    limit on connections (each open stream holds one) and no keep-alive."""

    def __init__(self, url: str, model: str = DECODER, connect_timeout: float = 10.0) -> None:
        url = url.strip().rstrip("/")
        self.base = url if "://" in url else f"http://{url}"
        self.model = model
        self.connect_timeout = connect_timeout
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.connect_timeout)
            # One connection per request, closed at its end: tritonserver's shutdown waits
            # for every open HTTP connection, so an idle kept-alive one would hold it for
            # its whole --exit-timeout-secs (seen: exit code 1 after 30 s).
            connector = aiohttp.TCPConnector(limit=0, force_close=True)
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=timeout,
                json_serialize=lambda o: orjson.dumps(o).decode(),
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def ready(self) -> bool:
        """The decoder model is ready (GET /v2/models/<model>/ready answers 200)."""
        url = f"{self.base}/v2/models/{self.model}/ready"
        try:
            async with self._client().get(url, timeout=aiohttp.ClientTimeout(total=5)) as r:
                return r.status == 200
        except (aiohttp.ClientError, TimeoutError, OSError):
            return False

    async def open(self, body: dict[str, Any]) -> DecoderStream:
        """POST the request; returns the stream once Triton answered with an event stream.
        Raises UpstreamError (unreachable, or Triton's status and message)."""
        url = f"{self.base}/v2/models/{self.model}/generate_stream"
        data = orjson.dumps(body)
        try:
            response = await self._client().post(
                url, data=data, headers={"Content-Type": "application/json"}
            )
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise UpstreamError(
                f"cannot reach the inference server at {self.base}: {exc}", unreachable=True
            ) from None
        if response.status != 200:
            try:
                raw = await response.read()
            finally:
                response.release()
            raise UpstreamError(error_message(raw), status=response.status)
        return DecoderStream(response)
