"""R3: Triton 2.51 loses the status code of a streamed model's error (gRPC stream: message
only; HTTP generate: 400 for everything), so the client tells "not now" from "never" by the
backend's stable messages: `queue full`, `request timeout expired` and `is not serving` map
to ServerUnavailable, everything else stays ClientError.

Unit tests of the mapping (gRPC and HTTP), then the real server: a faulted engine answers
"... is not serving" through the ensemble, and the client raises ServerUnavailable for it
over both protocols, while a bad request stays a plain ClientError.
"""

from __future__ import annotations

import json

import pytest
from helpers.tritonserver import TritonServer, skip_without_server
from test_triton import LONG_IDS, decoder_error

from client import ChatGLMClient, ClientError, ServerUnavailable
from client._grpc import map_grpc_error
from client._http import HttpTransport, parse_event
from client.errors import RETRYABLE_MESSAGES, error_from_message

# The messages exactly as the backend sends them (backend_src/triton/README.md), also as
# they arrive through the ensemble (prefixed).
UNAVAILABLE = [
    "queue full: 4 requests are waiting (max_queue 4); retry later",
    "request timeout expired (timeout 300000 us): generation stopped",
    "chatglm_decoder: the engine failed and is not serving (reload the model)",
    "in ensemble 'chatglm', queue full: 4 requests are waiting (max_queue 4); retry later",
]
NOT_UNAVAILABLE = [
    "max_tokens: 0 is out of range [1, 2048]",
    "text_input: required input is missing",
    "chatglm engine error: back-end fault: injected fault (Engine::inject_fault)",
    "request cancelled",
]


class _Exc(Exception):
    """Looks like tritonclient's InferenceServerException."""

    def __init__(self, msg: str, status: str | None) -> None:
        super().__init__(msg)
        self._msg, self._status = msg, status

    def message(self) -> str:
        return self._msg

    def status(self) -> str | None:
        return self._status


def test_markers_are_the_documented_ones():
    assert RETRYABLE_MESSAGES == ("queue full", "request timeout expired", "is not serving")


@pytest.mark.parametrize("message", UNAVAILABLE)
def test_retryable_messages_are_server_unavailable(message):
    assert isinstance(error_from_message(message), ServerUnavailable)
    # gRPC: a stream error carries no status code in 2.51.
    err = map_grpc_error(_Exc(message, None))
    assert isinstance(err, ServerUnavailable) and str(err) == message
    # HTTP: an SSE error event and a /generate error body.
    with pytest.raises(ServerUnavailable, match="."):
        parse_event(json.dumps({"error": message}))
    with pytest.raises(ServerUnavailable):
        HttpTransport._single(json.dumps({"error": message}).encode())


@pytest.mark.parametrize("message", NOT_UNAVAILABLE)
def test_other_messages_stay_client_error(message):
    for err in (error_from_message(message), map_grpc_error(_Exc(message, None))):
        assert type(err) is ClientError
    with pytest.raises(ClientError) as info:
        parse_event(json.dumps({"error": message}))
    assert type(info.value) is ClientError


@pytest.mark.server
def test_not_serving_reaches_the_client_as_server_unavailable(tmp_path):
    skip_without_server()
    with TritonServer(log_dir=tmp_path, backend_config={"allow_fault_injection": True}) as srv:
        err = decoder_error(srv.grpc_url, LONG_IDS, parameters={"glm_inject_fault": True})
        assert err is not None and "injected fault" in err, err
        srv.wait_metric("glm_engine_healthy", lambda v: v == 0)
        for protocol, url in (("grpc", srv.grpc_url), ("http", srv.http_url)):
            with ChatGLMClient(url, protocol=protocol, timeout=60) as c:
                with pytest.raises(ServerUnavailable, match="is not serving"):
                    c.generate("你好", max_tokens=4)
                with pytest.raises(ServerUnavailable, match="is not serving"):
                    list(c.stream("你好", max_tokens=4))
                with pytest.raises(ClientError) as info:
                    c.generate("你好", max_tokens=0)
                assert type(info.value) is ClientError and "max_tokens" in str(info.value)
        assert srv.stop() == 0
