"""Exception types raised by the ChatGLM client."""

from __future__ import annotations


class ClientError(Exception):
    """The server rejected a request or answered with an error.

    ``str(error)`` is the server's message (or ours, when the failure is local).
    """


class ServerUnavailable(ClientError):
    """The server could not be reached (connection refused, DNS failure, ...)."""
