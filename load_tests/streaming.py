"""Transports of the load tests: one streamed request, timed response by response.

Both protocols go through the client library (``client/``), which owns the wire format:

- ``grpc``: Triton's bidirectional stream, ``client._grpc.GrpcTransport.responses()``
  (one stream per request). Usable from Locust (after
  ``grpc.experimental.gevent.init_gevent()``) and from plain threads.
- ``http``: ``POST /v2/models/<model>/generate_stream`` (SSE, parsed by ``client/sse.py``),
  ``client._http.HttpTransport.events()`` on one kept-alive connection.

Tokens of a response (the two targets of ``load_tests.workload``):

- ``chatglm``: its ``token_count`` output (usually 1; more when the decoder merged steps
  that piled up while its responder was behind). Against a server whose ensemble has no
  ``token_count`` output (older model repositories) each response carrying
  ``text_output`` counts as one token, which undercounts merged responses. A response's
  text may be empty while a multi-byte character is held back. The empty final response
  that closes a request carries no output and is not counted.
- ``chatglm_decoder``: its ``output_ids``, one by one (an SSE event carries a single id as
  a bare number).

All tokens of one response get its arrival time (merged tokens: inter-token gaps of 0).

``python -m load_tests.streaming --check URL`` exits 1 with one line when no server
serves the model there.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from client._grpc import GrpcTransport, response_text, response_tokens
from client._http import HttpTransport, split_host_port, token_count
from client.errors import ClientError
from client.params import TEXT_INPUT, TEXT_OUTPUT, TensorValue, build_generate_body, build_tensors
from load_tests.stats import Record
from load_tests.workload import DECODER, ENSEMBLE, TARGETS, Request

PROTOCOLS = ("grpc", "http")
DEFAULT_PORTS = {"grpc": 8001, "http": 8000}


def grpc_tensors(req: Request) -> list[TensorValue]:
    """Input tensors of one streamed request: the client's, with ``input_ids`` in place of
    ``text_input`` for a prompt of ids."""
    sampling = {"max_tokens": req.max_tokens, "ignore_eos": req.ignore_eos}
    if isinstance(req.prompt, str):
        return build_tensors(req.prompt, req.history, sampling, stream=True)
    ids = TensorValue("input_ids", "INT32", np.asarray(req.prompt, dtype=np.int32))
    rest = build_tensors("", None, sampling, stream=True)
    return [ids, *[t for t in rest if t.name != TEXT_INPUT]]


def http_body(req: Request) -> dict[str, Any]:
    """The /generate_stream body of one request (``input_ids`` for a prompt of ids)."""
    sampling = {"max_tokens": req.max_tokens, "ignore_eos": req.ignore_eos}
    if isinstance(req.prompt, str):
        return build_generate_body(req.prompt, req.history, sampling, stream=True)
    body = build_generate_body("", None, sampling, stream=True)
    del body[TEXT_INPUT]
    return {"input_ids": list(req.prompt), **body}


def grpc_response(result: Any) -> tuple[int, str]:
    """(tokens, text) of one gRPC response of either target."""
    text = response_text(result)
    if text is not None:
        return response_tokens(result), text
    ids = result.as_numpy("output_ids")
    return (0 if ids is None else int(ids.size)), ""


def http_event(event: dict[str, Any]) -> tuple[int, str]:
    """(tokens, text) of one SSE event of either target."""
    if "output_ids" in event:
        ids = event["output_ids"]
        return (len(ids) if isinstance(ids, list) else 1), ""
    text = event.get(TEXT_OUTPUT)
    if text is None:
        return 0, ""
    return token_count(event), text if isinstance(text, str) else str(text)


class Stream:
    """Sends one request at a time and records it (``Record``, ``time.perf_counter``).

    Not for concurrent requests: one per thread (or Locust user). ``tokens_seen`` counts
    every token received so far (read by the soak's sampler); ``current`` is the request
    in flight, if any.
    """

    def __init__(self, protocol: str, url: str, model: str = ENSEMBLE, timeout: float = 600.0):
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
        self.protocol = protocol
        self.tokens_seen = 0
        self.current: Record | None = None
        self._grpc: GrpcTransport | None = None
        self._http: HttpTransport | None = None
        self._transport: GrpcTransport | HttpTransport
        if protocol == "grpc":
            self._transport = self._grpc = GrpcTransport(url, model, timeout)
        else:
            self._transport = self._http = HttpTransport(url, model, timeout, keep_alive=True)

    def _responses(self, req: Request) -> Iterator[tuple[float, int, str]]:
        """(arrival time, tokens, text) of each response of one request."""
        if self._grpc is not None:
            for t, result in self._grpc.responses(grpc_tensors(req)):
                yield (t, *grpc_response(result))
        else:
            assert self._http is not None
            for t, event in self._http.events(http_body(req)):
                yield (t, *http_event(event))

    def send(self, req: Request) -> Record:
        """Send ``req`` and wait for its last response; failures end up in ``error``."""
        pieces: list[str] = []
        rec = Record(start=time.perf_counter(), expected=req.expected, index=req.index)
        try:
            if self._grpc is not None:
                self._grpc.batched()  # the model's metadata, once, before the clock starts
                rec.start = time.perf_counter()
            self.current = rec
            for t, n, text in self._responses(req):
                rec.token_times.extend([t] * n)
                self.tokens_seen += n
                pieces.append(text)
        except ClientError as exc:
            rec.error = str(exc)
        except Exception as exc:  # a bug or an unexpected reply: recorded, not raised
            rec.error = f"{type(exc).__name__}: {exc}"
        rec.end = time.perf_counter()
        rec.text = "".join(pieces)
        self.current = None
        return rec

    def close(self) -> None:
        try:
            self._transport.close()
        except Exception:
            pass


def server_problem(protocol: str, url: str, model: str) -> str | None:
    """Why ``model`` cannot be load-tested at ``url`` (one line), or None when it is ready."""
    try:
        if protocol == "grpc":
            import tritonclient.grpc as grpcclient

            ready = grpcclient.InferenceServerClient(url).is_model_ready(model)
        else:
            import http.client

            host, port = split_host_port(url, DEFAULT_PORTS["http"])
            conn = http.client.HTTPConnection(host, port, timeout=10)
            conn.request("GET", f"/v2/models/{model}/ready")
            ready = conn.getresponse().status == 200
            conn.close()
    except Exception as exc:  # connection refused and the like
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:160]
        return f"no Triton server at {url} ({first})"
    if not ready:
        return f"the server at {url} has no ready model {model!r}"
    return None


def wait_ready(protocol: str, url: str, model: str, seconds: float) -> str | None:
    """``server_problem`` after retrying for up to ``seconds``."""
    deadline = time.time() + seconds
    while True:
        problem = server_problem(protocol, url, model)
        if problem is None or time.time() >= deadline:
            return problem
        time.sleep(0.5)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m load_tests.streaming",
        description="Check that a Triton server serves a model (exit 1 with one line if not).",
    )
    p.add_argument("--check", metavar="URL", required=True, help="the server's host:port")
    p.add_argument("--protocol", choices=PROTOCOLS, default="grpc", help="default grpc")
    p.add_argument("--model", choices=TARGETS, default=ENSEMBLE, help="default chatglm")
    p.add_argument("--prefix", default="", help="put before the message when the check fails")
    p.add_argument("--hint", default="", help="put after the message when the check fails")
    args = p.parse_args(argv)
    problem = server_problem(args.protocol, args.check, args.model)
    if problem is None:
        return 0
    print(f"{args.prefix}{problem}{args.hint}", file=sys.stderr)
    return 1


__all__ = ["DECODER", "ENSEMBLE", "PROTOCOLS", "Stream", "server_problem", "wait_ready"]

if __name__ == "__main__":
    sys.exit(main())
