"""ASGI pieces: client-disconnect watching, the event-stream response, the API key.

Disconnects are watched on ASGI ``receive`` (``http.disconnect``), never inferred from a
failed write: uvicorn drops writes to a closed connection silently, and a stream may be
between two tokens (or a non-streamed request still generating) when its client leaves.
:func:`until_disconnect` runs the work against that watch and cancels the work the
moment the client is gone; the work's ``finally`` closes its upstream stream, and with
it the decoder request.
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import orjson
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from glmserve.openai_api.errors import APIError, invalid, too_large, unauthorized

T = TypeVar("T")


class ClientGone(Exception):
    """The client disconnected before the answer was complete."""


async def wait_disconnect(receive: Receive) -> None:
    """Returns when the client has disconnected (the request body was already read)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


async def until_disconnect(receive: Receive, work: Awaitable[T]) -> T:
    """``await work``, cancelled as soon as the client disconnects (raises ClientGone)."""
    task = asyncio.ensure_future(work)
    watch = asyncio.ensure_future(wait_disconnect(receive))
    try:
        await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        raise
    finally:
        watch.cancel()
    if task.done():
        return task.result()
    task.cancel()
    try:
        await task
    except (asyncio.CancelledError, Exception):  # noqa: BLE001 - the client is gone anyway
        pass
    raise ClientGone


def sse(obj: Any) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


DONE = b"data: [DONE]\n\n"


class EventStreamResponse:
    """``text/event-stream`` from an async iterator of byte strings; the iterator is
    cancelled when the client disconnects (its ``finally`` then releases what it holds)."""

    def __init__(
        self,
        events: AsyncIterator[bytes],
        headers: dict[str, str] | None = None,
        on_disconnect: Callable[[], None] | None = None,
    ):
        self.events = events
        self.on_disconnect = on_disconnect
        self.headers = {"cache-control": "no-cache", "x-accel-buffering": "no", **(headers or {})}

    async def _produce(self, send: Send) -> None:
        raw = [(b"content-type", b"text/event-stream; charset=utf-8")]
        raw += [(k.encode("latin-1"), v.encode("latin-1")) for k, v in self.headers.items()]
        await send({"type": "http.response.start", "status": 200, "headers": raw})
        async for data in self.events:
            await send({"type": "http.response.body", "body": data, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await until_disconnect(receive, self._produce(send))
        except ClientGone:
            if self.on_disconnect is not None:
                self.on_disconnect()
        finally:
            close = getattr(self.events, "aclose", None)
            if close is not None:
                await close()


async def read_json(request: Request, limit: int) -> Any:
    """The request body as JSON, at most ``limit`` bytes (413 beyond; 400 if not JSON)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large(int(declared), limit)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise too_large(None, limit)
    if not body:
        raise invalid(None, "the request body is empty: send a JSON object")
    try:
        return orjson.loads(bytes(body))
    except orjson.JSONDecodeError as e:
        raise invalid(None, f"the request body is not valid JSON: {e}") from None


class APIKeyMiddleware:
    """Every request except ``open_paths`` needs ``Authorization: Bearer <key>``."""

    def __init__(
        self, app: ASGIApp, api_key: str | None, open_paths: tuple[str, ...] = ("/health",)
    ):
        self.app = app
        self.key = api_key.encode("utf-8") if api_key else None
        self.open_paths = open_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.key is None or scope["type"] != "http" or scope["path"] in self.open_paths:
            await self.app(scope, receive, send)
            return
        header = dict(scope["headers"]).get(b"authorization", b"")
        scheme, _, token = header.partition(b" ")
        if not header:
            error = unauthorized(
                "You didn't provide an API key: send it as 'Authorization: Bearer <key>'"
            )
        elif scheme.lower() != b"bearer" or not hmac.compare_digest(token.strip(), self.key):
            error = unauthorized("Incorrect API key provided")
        else:
            await self.app(scope, receive, send)
            return
        await send_error(send, error)


async def send_error(send: Send, error: APIError) -> None:
    body = orjson.dumps(error.body())
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [
        (k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in error.headers.items()
    ]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
