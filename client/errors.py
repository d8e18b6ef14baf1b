"""Exception types raised by the ChatGLM client."""

from __future__ import annotations


class ClientError(Exception):
    """The server rejected a request or answered with an error.

    ``str(error)`` is the server's message (or ours, when the failure is local).
    """


class ServerUnavailable(ClientError):
    """The server could not be reached (connection refused, DNS failure, ...), or it is
    there but cannot take the request now (its queue is full, the request ran past its
    timeout, the model is not serving): worth retrying later or elsewhere."""


# Triton 2.51 delivers errors of a streamed (decoupled) model without their status
# code (gRPC: only the message; HTTP: 400 for all), so the message is what tells a
# temporary refusal from a bad request. The backend keeps these stable
# (backend_src/triton/README.md, "Error messages").
RETRYABLE_MESSAGES = ("queue full", "request timeout expired", "is not serving")


def error_from_message(message: str) -> ClientError:
    """A server's error message -> ServerUnavailable when it says "not now", else ClientError."""
    if any(marker in message for marker in RETRYABLE_MESSAGES):
        return ServerUnavailable(message)
    return ClientError(message)
