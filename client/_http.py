"""HTTP transport: Triton's generate extension (/generate and /generate_stream, SSE)."""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple, TypeVar
from urllib.parse import quote

from .errors import ClientError, ServerUnavailable, error_from_message
from .params import (
    COMPLETION_TOKENS,
    FINISH_REASON,
    INDEX,
    MODEL_NAME,
    PROMPT_TOKENS,
    TEXT_OUTPUT,
    TOKEN_COUNT,
    TOKEN_LOGPROBS,
    Chunk,
    parse_logprobs,
)
from .sse import iter_sse_data


def split_host_port(url: str, default_port: int) -> tuple[str, int]:
    """'host:port', 'http://host:port/' or 'host' -> (host, port)."""
    rest = url.strip()
    if "://" in rest:
        scheme, rest = rest.split("://", 1)
        if scheme not in ("http", "grpc"):
            raise ClientError(f"unsupported URL scheme {scheme!r} in {url!r}")
    rest = rest.split("/", 1)[0]
    if not rest:
        raise ClientError(f"no host in URL {url!r}")
    if rest.startswith("["):  # [ipv6]:port
        host, _, tail = rest[1:].partition("]")
        port_s = tail[1:] if tail.startswith(":") else ""
    else:
        host, _, port_s = rest.rpartition(":") if ":" in rest else (rest, "", "")
    if not port_s:
        return host, default_port
    try:
        port = int(port_s)
    except ValueError:
        raise ClientError(f"bad port in URL {url!r}") from None
    if not 0 < port < 65536:
        raise ClientError(f"bad port in URL {url!r}")
    return host, port


def error_message(body: bytes, status: int, reason: str) -> str:
    """The server's error message from a JSON error body, or the raw body."""
    text = body.decode("utf-8", errors="replace").strip()
    try:
        obj = json.loads(text)
    except ValueError:
        obj = None
    if isinstance(obj, dict) and "error" in obj:
        return str(obj["error"])
    return text or f"HTTP {status} {reason}"


class TimedEvent(NamedTuple):
    """One event of a /generate_stream reply and when it was read."""

    time: float  # time.perf_counter() when its data was read
    data: dict[str, Any]  # the event's JSON object: outputs by name


_T = TypeVar("_T")


def parse_event(data: str) -> str:
    """One SSE event's data -> its text delta; an error event raises ClientError."""
    return parse_event_chunk(data).text


def token_count(obj: dict[str, Any]) -> int:
    """``token_count`` of a generate JSON object (a number, or a one-element list);
    1 when absent (a server whose ensemble does not send it)."""
    value = obj.get(TOKEN_COUNT)
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if isinstance(value, bool) or not isinstance(value, int):
        return 1
    return value


def parse_event_object(data: str) -> dict[str, Any]:
    """One SSE event's data -> its JSON object; an error event raises ClientError."""
    try:
        obj = json.loads(data)
    except ValueError:
        raise ClientError(f"malformed event from server: {data[:200]!r}") from None
    if not isinstance(obj, dict):
        raise ClientError(f"malformed event from server: {data[:200]!r}")
    if "error" in obj:
        raise error_from_message(str(obj["error"]))
    return obj


def _scalar(obj: dict[str, Any], name: str, default: Any) -> Any:
    value = obj.get(name, default)
    if isinstance(value, list):
        value = value[0] if len(value) == 1 else default
    return default if value is None else value


def object_chunk(obj: dict[str, Any]) -> Chunk:
    """One generate JSON object (outputs by name) -> its chunk."""
    text = obj.get(TEXT_OUTPUT, "")
    return Chunk(
        text if isinstance(text, str) else str(text),
        token_count(obj),
        int(_scalar(obj, INDEX, 0)),
        str(_scalar(obj, FINISH_REASON, "")),
        int(_scalar(obj, PROMPT_TOKENS, 0)),
        int(_scalar(obj, COMPLETION_TOKENS, 0)),
        parse_logprobs(_scalar(obj, TOKEN_LOGPROBS, "")),
    )


def parse_event_chunk(data: str) -> Chunk:
    """One SSE event's data -> its chunk (text delta, token count, choice state); errors
    raise ClientError."""
    return object_chunk(parse_event_object(data))


class HttpTransport:
    """Plain http.client (stdlib; works under gevent's monkey patching too).

    With ``keep_alive`` one connection is reused for consecutive requests (not for
    concurrent ones: one request at a time per transport); otherwise each request
    opens its own.
    """

    def __init__(
        self,
        url: str,
        model: str = MODEL_NAME,
        timeout: float | None = None,
        keep_alive: bool = False,
    ) -> None:
        self.url = url
        self.model = model
        self.timeout = timeout
        self.keep_alive = keep_alive
        self.host, self.port = split_host_port(url, 8000)
        self._conn: http.client.HTTPConnection | None = None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is not None:
            return self._conn
        conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        if self.keep_alive:
            self._conn = conn
        return conn

    def _release(self, conn: http.client.HTTPConnection, resp: Any = None) -> None:
        """Keep a kept-alive connection whose reply was read to the end; close others."""
        if conn is self._conn and resp is not None and resp.isclosed() and not resp.will_close:
            return
        conn.close()
        if conn is self._conn:
            self._conn = None

    def _post(self, endpoint: str, body: dict[str, Any]) -> tuple[Any, Any]:
        conn = self._connection()
        path = f"/v2/models/{quote(self.model)}/{endpoint}"
        payload = json.dumps(body, ensure_ascii=False).encode("utf-8")
        try:
            conn.request("POST", path, body=payload, headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
        except OSError as exc:  # refused, DNS failure, timeout, ...
            self._release(conn)
            if isinstance(exc, TimeoutError):
                raise ClientError(
                    f"no response from {self.url} within {self.timeout:g} s"
                ) from None
            raise ServerUnavailable(f"cannot reach {self.url}: {exc}") from None
        if resp.status != 200:
            message = error_message(resp.read(), resp.status, resp.reason)
            self._release(conn, resp)
            if resp.status in (502, 503, 504):
                raise ServerUnavailable(f"server unavailable (HTTP {resp.status}): {message}")
            raise error_from_message(message)
        return conn, resp

    def generate(self, body: dict[str, Any]) -> str:
        conn, resp = self._post("generate", body)
        try:
            raw = resp.read()
        finally:
            self._release(conn, resp)
        try:
            obj = json.loads(raw)
        except ValueError:
            raise ClientError(f"malformed response from server: {raw[:200]!r}") from None
        if not isinstance(obj, dict):
            raise ClientError(f"malformed response from server: {raw[:200]!r}")
        if "error" in obj:
            raise error_from_message(str(obj["error"]))
        text = obj.get(TEXT_OUTPUT, "")
        return text if isinstance(text, str) else str(text)

    def stream(self, body: dict[str, Any]) -> Iterator[str]:
        chunks = self.chunks(body)
        try:
            for chunk in chunks:
                yield chunk.text
        finally:
            chunks.close()

    def chunks(self, body: dict[str, Any]) -> Iterator[Chunk]:
        return self._events(body, self._single, parse_event_chunk)

    def events(self, body: dict[str, Any]) -> Iterator[TimedEvent]:
        """Yield each event of one /generate_stream request as its JSON object, with the
        time it was read, until the server ends the stream; an error event raises.

        The lower level under :meth:`chunks`, for callers that read other outputs (e.g.
        ``chatglm_decoder``'s ``output_ids``) or time the events (the load tests). A reply
        that is not an event stream (an error before inference began) raises its error,
        or is yielded as one event when it is an object of outputs.
        """

        def single(raw: bytes) -> TimedEvent:
            return TimedEvent(time.perf_counter(), self._single_object(raw))

        def event(data: str) -> TimedEvent:
            return TimedEvent(time.perf_counter(), parse_event_object(data))

        return self._events(body, single, event)

    def _events(
        self, body: dict[str, Any], single: Callable[[bytes], _T], event: Callable[[str], _T]
    ) -> Iterator[_T]:
        conn, resp = self._post("generate_stream", body)
        try:
            ctype = resp.getheader("Content-Type", "")
            if "text/event-stream" not in ctype:
                # An error before inference began comes back as plain JSON.
                raw = resp.read()
                yield single(raw)
                return
            try:
                for data in iter_sse_data(resp):
                    yield event(data)
                resp.read()  # at the end already: marks the reply complete (keep-alive)
            except TimeoutError:
                raise ClientError(f"no event from {self.url} within {self.timeout:g} s") from None
            except (ConnectionError, http.client.HTTPException) as exc:
                raise ServerUnavailable(f"connection to {self.url} lost: {exc}") from None
        finally:
            self._release(conn, resp)

    @staticmethod
    def _single_object(raw: bytes) -> dict[str, Any]:
        try:
            obj = json.loads(raw)
        except ValueError:
            raise ClientError(f"malformed response from server: {raw[:200]!r}") from None
        if isinstance(obj, dict) and "error" in obj:
            raise error_from_message(str(obj["error"]))
        if not isinstance(obj, dict) or not obj:
            raise ClientError(f"malformed response from server: {raw[:200]!r}")
        return obj

    @staticmethod
    def _single(raw: bytes) -> Chunk:
        obj = HttpTransport._single_object(raw)
        if TEXT_OUTPUT in obj:
            return object_chunk(obj)
        raise ClientError(f"malformed response from server: {raw[:200]!r}")
