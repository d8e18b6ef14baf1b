"""The OpenAI-compatible HTTP API (Starlette), in front of Triton's ``chatglm_decoder``.

Routes: ``POST /v1/chat/completions``, ``POST /v1/completions``, ``GET /v1/models``
(and ``/v1/models/{id}``), ``GET /health`` (200 only while Triton's decoder is ready;
no API key needed). A request is checked (protocol.py), tokenized here, sent to the
decoder over HTTP ``/generate_stream`` and rendered choice by choice (render.py).

Errors are answered before any byte of the answer is sent whenever they can be: the
first decoder response is awaited before the stream's headers go out, so a full queue
is a 503 and a refused value a 400 even with ``stream: true``. A failure after that
becomes one ``data: {"error": ...}`` event, then ``data: [DONE]``.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from glmserve.openai_api import protocol
from glmserve.openai_api.asgi import (
    DONE,
    APIKeyMiddleware,
    ClientGone,
    EventStreamResponse,
    read_json,
    sse,
    until_disconnect,
)
from glmserve.openai_api.config import ServedModel, Settings, api_key_from_env, load_model
from glmserve.openai_api.errors import (
    APIError,
    internal,
    invalid,
    is_retryable,
    model_not_found,
    truncated,
    unavailable,
)
from glmserve.openai_api.protocol import Plan
from glmserve.openai_api.render import Renderer
from glmserve.openai_api.upstream import DecoderResponse, DecoderStream, Triton, UpstreamError

log = logging.getLogger("glmserve.openai_api")


class ORJSONResponse(JSONResponse):
    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def error_response(error: APIError) -> Response:
    return ORJSONResponse(error.body(), status_code=error.status, headers=error.headers)


class Service:
    """The request handlers, bound to one model and one Triton client."""

    def __init__(self, settings: Settings, model: ServedModel, triton: Triton) -> None:
        self.settings = settings
        self.model = model
        self.triton = triton
        self.started = int(time.time())

    # -- upstream ------------------------------------------------------------------
    def upstream_error(self, e: UpstreamError, plan: Plan | None) -> APIError:
        """Triton's refusal or failure as the client's error (never a stack trace)."""
        msg = e.message
        if e.unreachable:
            log.warning("%s", msg)
            return unavailable(
                "the inference server is unreachable; retry later", "upstream_unreachable"
            )
        if is_retryable(msg):
            return unavailable(msg, "queue_full" if "queue full" in msg else "unavailable")
        if e.status in (404, 502, 503, 504):
            return unavailable(f"the inference server cannot serve the request now: {msg}")
        named = plan.field_error(msg) if plan is not None else None
        if named is not None and e.status in (None, 400):
            return named
        if e.status == 400:
            return invalid(None, msg)
        log.error("inference failed: %s (HTTP status %s)", msg, e.status)
        return internal(f"the inference failed: {msg}")

    async def open(self, plan: Plan) -> tuple[DecoderStream, DecoderResponse]:
        """The decoder's stream and its first response (errors come before any answer).

        The decoder always streams (one response per step), for non-streamed answers too:
        Triton 2.51 notices that a /generate_stream connection was closed only when it
        writes to it, so a request that writes nothing until its end would not be
        cancelled when its client leaves (measured: it ran to its end)."""
        try:
            stream = await self.triton.open(plan.upstream_body(stream=True))
        except UpstreamError as e:
            raise self.upstream_error(e, plan) from None
        try:
            first = await stream.__anext__()
        except StopAsyncIteration:
            stream.close()
            raise internal("the inference server ended the request without a response") from None
        except UpstreamError as e:
            stream.close()
            raise self.upstream_error(e, plan) from None
        except BaseException:
            stream.close()  # cancelled (client gone) or failed: drop the decoder request
            raise
        return stream, first

    def _finished(self, plan: Plan, renderer: Renderer) -> None:
        usage = renderer.usage()
        reasons = ",".join(str(c.finish_reason) for c in renderer.choices)
        log.info(
            "%s user=%r prompt_tokens=%d completion_tokens=%d finish=%s",
            renderer.id,
            plan.user,
            usage["prompt_tokens"],
            usage["completion_tokens"],
            reasons,
        )

    @staticmethod
    def _early_end(renderer: Renderer, stream: DecoderStream) -> None:
        states = [(c.index, c.tokens, c.finish_reason) for c in renderer.choices]
        log.error(
            "%s: the decoder's stream ended after %d responses; choices (index, tokens, "
            "finish): %s; last event: %r",
            renderer.id,
            stream.responses,
            states,
            stream.last_event[:300],
        )

    @staticmethod
    def _gone(renderer: Renderer) -> None:
        log.info("%s: the client disconnected; its decoder request is cancelled", renderer.id)

    async def collect(self, plan: Plan, renderer: Renderer) -> dict[str, Any]:
        stream, first = await self.open(plan)
        try:
            renderer.add(first)
            async for response in stream:
                renderer.add(response)
        except UpstreamError as e:
            raise self.upstream_error(e, plan) from None
        except ValueError as e:
            log.error("bad response from the decoder: %s", e)
            raise internal("the inference server answered out of order") from None
        finally:
            stream.close()
        if not renderer.done:
            self._early_end(renderer, stream)
            raise truncated()
        self._finished(plan, renderer)
        return renderer.result()

    async def events(
        self, plan: Plan, renderer: Renderer, stream: DecoderStream, first: DecoderResponse
    ) -> AsyncIterator[bytes]:
        """The chunks of a streamed answer; closing this generator early (the client left)
        closes the decoder stream, which cancels the decoder request."""
        try:
            for chunk in renderer.role_chunks():
                yield sse(chunk)
            response: DecoderResponse | None = first
            while response is not None:
                for chunk in renderer.feed(response):
                    yield sse(chunk)
                response = await anext(stream, None)
            if not renderer.done:
                self._early_end(renderer, stream)
                yield sse(truncated().body())
            elif plan.include_usage:
                yield sse(renderer.usage_chunk())
            if renderer.done:
                self._finished(plan, renderer)
        except UpstreamError as e:
            yield sse(self.upstream_error(e, plan).body())
        except Exception:  # noqa: BLE001 - logged here, never sent to the client
            log.exception("stream %s failed", renderer.id)
            yield sse(internal().body())
        finally:
            stream.close()
        yield DONE

    # -- routes ----------------------------------------------------------------------
    async def generate(self, request: Request, parse: Callable[..., Plan]) -> Response:
        body = await read_json(request, self.settings.max_body_bytes)
        plan = parse(body, self.model.info)
        renderer = Renderer(plan, self.model.info.tokenizer, self.model.table)
        try:
            if plan.stream:
                stream, first = await until_disconnect(request.receive, self.open(plan))
                return EventStreamResponse(
                    self.events(plan, renderer, stream, first),
                    on_disconnect=lambda: self._gone(renderer),
                )
            result = await until_disconnect(request.receive, self.collect(plan, renderer))
        except ClientGone:
            self._gone(renderer)
            return Response(status_code=499)
        return ORJSONResponse(result)

    async def chat(self, request: Request) -> Response:
        return await self.generate(request, protocol.chat_request)

    async def completions(self, request: Request) -> Response:
        return await self.generate(request, protocol.completion_request)

    def _model_object(self, name: str) -> dict[str, Any]:
        return {"id": name, "object": "model", "created": self.started, "owned_by": "glmserve"}

    async def models(self, request: Request) -> Response:
        data = [self._model_object(n) for n in self.model.info.served()]
        return ORJSONResponse({"object": "list", "data": data})

    async def one_model(self, request: Request) -> Response:
        name = request.path_params["model"]
        if self.model.info.adapter_of(name) is None:
            raise model_not_found(name, list(self.model.info.served()))
        return ORJSONResponse(self._model_object(name))

    async def health(self, request: Request) -> Response:
        if await self.triton.ready():
            return ORJSONResponse({"status": "ok", "models": list(self.model.info.names)})
        return error_response(
            unavailable(f"Triton's {self.triton.model} is not ready", "not_ready")
        )


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, APIError)
    return error_response(exc)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        return error_response(APIError(404, f"no route {request.url.path}", code="not_found"))
    if exc.status_code == 405:
        msg = f"method {request.method} is not allowed on {request.url.path}"
        return error_response(APIError(405, msg, code="method_not_allowed"))
    return error_response(APIError(exc.status_code, str(exc.detail)))


async def _internal_error(request: Request, exc: Exception) -> Response:
    log.error("unhandled error on %s", request.url.path, exc_info=exc)
    return error_response(internal())


def create_app(
    settings: Settings,
    api_key: str | None = None,
    model: ServedModel | None = None,
    triton: Triton | None = None,
) -> Starlette:
    """The ASGI app (``model`` and ``triton`` may be given, e.g. by tests)."""
    model = model or load_model(settings)
    triton = triton or Triton(settings.triton_url, settings.decoder_model)
    service = Service(settings, model, triton)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await triton.close()

    routes = [
        Route("/v1/chat/completions", service.chat, methods=["POST"]),
        Route("/v1/completions", service.completions, methods=["POST"]),
        Route("/v1/models", service.models, methods=["GET"]),
        Route("/v1/models/{model:path}", service.one_model, methods=["GET"]),
        Route("/health", service.health, methods=["GET"]),
    ]
    app = Starlette(
        routes=routes,
        middleware=[Middleware(APIKeyMiddleware, api_key=api_key)],
        exception_handlers={
            APIError: _api_error,
            HTTPException: _http_error,
            Exception: _internal_error,
        },
        lifespan=lifespan,
    )
    app.state.service = service
    return app


def app_from_env() -> Starlette:
    """uvicorn's factory (``--factory``) for every worker process: settings from
    GLM_OPENAI_SETTINGS, the API key from GLM_OPENAI_API_KEY."""
    return create_app(Settings.from_env(), api_key_from_env())
