"""Tiny in-process fakes of Triton's gRPC stream and HTTP generate endpoints.

Used ONLY by the client's error-handling unit tests (the happy paths are tested
against the real server in tests/server/test_client_live.py). The only test here checks
the fakes themselves speak the wire format the client expects.
"""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _bytes_tensor(text: str) -> bytes:
    data = text.encode("utf-8")
    return struct.pack("<I", len(data)) + data


@dataclass
class Script:
    """What the fake answers: text pieces, then optionally an error message."""

    pieces: list[str] = field(default_factory=list)
    token_counts: list[int] | None = None  # a token_count output per piece, when given
    error: str | None = None
    delay: float = 0.0  # seconds before each piece
    input_shape: list[int] = field(default_factory=lambda: [-1, 1])
    requests: list[Any] = field(default_factory=list)


class _Servicer(service_pb2_grpc.GRPCInferenceServiceServicer):
    def __init__(self, script: Script) -> None:
        self.script = script

    def ModelReady(self, request: Any, context: Any) -> Any:
        return service_pb2.ModelReadyResponse(ready=True)

    def ModelConfig(self, request: Any, context: Any) -> Any:
        resp = service_pb2.ModelConfigResponse()
        resp.config.name = request.name
        resp.config.max_batch_size = 256 if len(self.script.input_shape) == 2 else 0
        return resp

    def ModelMetadata(self, request: Any, context: Any) -> Any:
        meta = service_pb2.ModelMetadataResponse(name=request.name)
        t = meta.inputs.add()
        t.name, t.datatype = "text_input", "BYTES"
        t.shape.extend(self.script.input_shape)
        return meta

    def ModelStreamInfer(self, request_iterator: Iterator[Any], context: Any) -> Iterator[Any]:
        for request in request_iterator:
            self.script.requests.append(request)
            for i, piece in enumerate(self.script.pieces):
                if self.script.delay:
                    time.sleep(self.script.delay)
                resp = service_pb2.ModelStreamInferResponse()
                r = resp.infer_response
                r.model_name, r.id = request.model_name, request.id
                out = r.outputs.add()
                out.name, out.datatype = "text_output", "BYTES"
                out.shape.append(1)
                r.raw_output_contents.append(_bytes_tensor(piece))
                if self.script.token_counts is not None:
                    n = self.script.token_counts[i]
                    cnt = r.outputs.add()
                    cnt.name, cnt.datatype = "token_count", "INT32"
                    cnt.shape.extend([1, 1])
                    r.raw_output_contents.append(struct.pack("<i", n))
                yield resp
            if self.script.error is not None:
                yield service_pb2.ModelStreamInferResponse(error_message=self.script.error)
                continue
            resp = service_pb2.ModelStreamInferResponse()
            resp.infer_response.id = request.id
            resp.infer_response.parameters["triton_final_response"].bool_param = True
            yield resp


class FakeGrpcServer:
    def __init__(self, script: Script) -> None:
        self.script = script
        self.port = free_port()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(_Servicer(script), self.server)
        self.server.add_insecure_port(f"127.0.0.1:{self.port}")

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.port}"

    def __enter__(self) -> FakeGrpcServer:
        self.server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.stop(grace=None)


Responder = Callable[[BaseHTTPRequestHandler, str, dict[str, Any]], None]


class FakeHttpServer:
    """Calls ``responder(handler, path, json_body)`` for every POST."""

    def __init__(self, responder: Responder) -> None:
        self.bodies: list[dict[str, Any]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length) or b"{}")
                outer.bodies.append(body)
                responder(self, self.path, body)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.port}"

    def __enter__(self) -> FakeHttpServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def reply(handler: BaseHTTPRequestHandler, status: int, ctype: str, body: bytes) -> None:
    handler.send_response(status)
    handler.send_header("Content-Type", ctype)
    handler.send_header("Content-Length", str(len(body)))
    handler.send_header("Connection", "close")
    handler.end_headers()
    handler.wfile.write(body)
