"""HTTP transport: Triton's generate extension (/generate and /generate_stream, SSE)."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

from .errors import ClientError, ServerUnavailable, error_from_message
from .params import MODEL_NAME, TEXT_OUTPUT, TOKEN_COUNT, Chunk
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


def parse_event(data: str) -> str:
    """One SSE event's data -> its text delta; an error event raises ClientError."""
    return parse_event_chunk(data).text


def _token_count(obj: dict[str, Any]) -> int:
    """``token_count`` of a generate JSON object (a number, or a one-element list);
    1 when absent (a server whose ensemble does not send it)."""
    value = obj.get(TOKEN_COUNT)
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if isinstance(value, bool) or not isinstance(value, int):
        return 1
    return value


def parse_event_chunk(data: str) -> Chunk:
    """One SSE event's data -> its text delta and token count; errors raise ClientError."""
    try:
        obj = json.loads(data)
    except ValueError:
        raise ClientError(f"malformed event from server: {data[:200]!r}") from None
    if not isinstance(obj, dict):
        raise ClientError(f"malformed event from server: {data[:200]!r}")
    if "error" in obj:
        raise error_from_message(str(obj["error"]))
    text = obj.get(TEXT_OUTPUT, "")
    return Chunk(text if isinstance(text, str) else str(text), _token_count(obj))


class HttpTransport:
    """Plain http.client (stdlib; works under gevent's monkey patching too)."""

    def __init__(self, url: str, model: str = MODEL_NAME, timeout: float | None = None) -> None:
        self.url = url
        self.model = model
        self.timeout = timeout
        self.host, self.port = split_host_port(url, 8000)

    def close(self) -> None:
        pass

    def _post(self, endpoint: str, body: dict[str, Any]) -> tuple[Any, Any]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        path = f"/v2/models/{quote(self.model)}/{endpoint}"
        payload = json.dumps(body, ensure_ascii=False).encode("utf-8")
        try:
            conn.request("POST", path, body=payload, headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
        except OSError as exc:  # refused, DNS failure, timeout, ...
            conn.close()
            if isinstance(exc, TimeoutError):
                raise ClientError(
                    f"no response from {self.url} within {self.timeout:g} s"
                ) from None
            raise ServerUnavailable(f"cannot reach {self.url}: {exc}") from None
        if resp.status != 200:
            message = error_message(resp.read(), resp.status, resp.reason)
            conn.close()
            if resp.status in (502, 503, 504):
                raise ServerUnavailable(f"server unavailable (HTTP {resp.status}): {message}")
            raise error_from_message(message)
        return conn, resp

    def generate(self, body: dict[str, Any]) -> str:
        conn, resp = self._post("generate", body)
        try:
            raw = resp.read()
        finally:
            conn.close()
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
        conn, resp = self._post("generate_stream", body)
        try:
            ctype = resp.getheader("Content-Type", "")
            if "text/event-stream" not in ctype:
                # An error before inference began comes back as plain JSON.
                raw = resp.read()
                yield self._single(raw)
                return
            try:
                for data in iter_sse_data(resp):
                    yield parse_event_chunk(data)
            except TimeoutError:
                raise ClientError(f"no event from {self.url} within {self.timeout:g} s") from None
            except (ConnectionError, http.client.HTTPException) as exc:
                raise ServerUnavailable(f"connection to {self.url} lost: {exc}") from None
        finally:
            conn.close()

    @staticmethod
    def _single(raw: bytes) -> Chunk:
        try:
            obj = json.loads(raw)
        except ValueError:
            raise ClientError(f"malformed response from server: {raw[:200]!r}") from None
        if isinstance(obj, dict) and "error" in obj:
            raise error_from_message(str(obj["error"]))
        if isinstance(obj, dict) and TEXT_OUTPUT in obj:
            return Chunk(str(obj[TEXT_OUTPUT]), _token_count(obj))
        raise ClientError(f"malformed response from server: {raw[:200]!r}")
