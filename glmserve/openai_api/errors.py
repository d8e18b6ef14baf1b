"""OpenAI's error object and the statuses of the OpenAI-compatible server.

Every failure reaches the client as ``{"error": {"message", "type", "param", "code"}}``
with the status OpenAI uses for it; no stack trace ever does (internal errors are
logged here with theirs and answered with a short message).

| status | when | type / code |
|---|---|---|
| 400 | an invalid or unsupported parameter (``param`` names it), bad JSON | invalid_request_error |
| 401 | missing or wrong API key | invalid_request_error / invalid_api_key |
| 404 | unknown model or path | invalid_request_error / model_not_found, not_found |
| 405 | wrong method | invalid_request_error / method_not_allowed |
| 413 | request body over the limit | invalid_request_error / request_too_large |
| 502 | Triton ended a request's stream before its last responses (tritonserver 2.51 drops them under load; docs/openai.md "Known limits") | server_error / upstream_truncated |
| 503 | the decoder's queue is full, it is not serving, or Triton is unreachable | server_error / queue_full, unavailable |
| 500 | anything else | server_error / internal_error |
"""

from __future__ import annotations

from typing import Any

from client.errors import RETRYABLE_MESSAGES

INVALID_REQUEST = "invalid_request_error"
SERVER_ERROR = "server_error"


class APIError(Exception):
    """A failure to answer with OpenAI's error object and ``status``."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        type: str | None = None,  # noqa: A002 - OpenAI's name
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type or (INVALID_REQUEST if status < 500 else SERVER_ERROR)
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


def invalid(param: str | None, message: str, code: str = "invalid_value") -> APIError:
    """400 for a bad parameter; ``param`` is the OpenAI name (dotted for nested ones)."""
    return APIError(400, message, param=param, code=code)


def unsupported(param: str, why: str = "") -> APIError:
    """400 for a parameter this server refuses instead of silently ignoring it."""
    text = f"{param} is not supported by this server (ChatGLM-6B)"
    return invalid(param, f"{text}: {why}" if why else text, code="unsupported_parameter")


def model_not_found(model: str, served: list[str]) -> APIError:
    names = ", ".join(served)
    return APIError(
        404,
        f"The model `{model}` does not exist; this server serves: {names}",
        param="model",
        code="model_not_found",
    )


def unauthorized(message: str) -> APIError:
    return APIError(401, message, code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})


def too_large(size: int | None, limit: int) -> APIError:
    got = f"of {size} bytes " if size is not None else ""
    return APIError(
        413, f"request body {got}is over the limit of {limit} bytes", code="request_too_large"
    )


def unavailable(message: str, code: str = "unavailable") -> APIError:
    """503: worth retrying later (the client's SDK does so by itself)."""
    return APIError(503, message, code=code, headers={"Retry-After": "1"})


def truncated() -> APIError:
    """502: Triton ended the decoder's stream before its last responses (the answer is
    incomplete; a retry regenerates it: the `openai` client retries 502 by itself)."""
    return APIError(
        502,
        "the inference server ended the answer before its end (its last responses were "
        "lost); retry the request",
        code="upstream_truncated",
    )


def internal(message: str = "internal error") -> APIError:
    return APIError(500, message, code="internal_error")


def is_retryable(message: str) -> bool:
    """The decoder's "not now" messages (queue full, timeout, not serving); Triton 2.51
    streams errors without their status, so the message tells (client/errors.py)."""
    return any(marker in message for marker in RETRYABLE_MESSAGES)
