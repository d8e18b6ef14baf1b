"""Unit tests of the client: request building, SSE parsing, error mapping, CLI arguments.

Fake servers (tests/unit/test_client_fakes.py) are used only for error paths; the happy
paths run against the real server in tests/server/test_client_live.py.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers.client_fakes import FakeGrpcServer, FakeHttpServer, Script, free_port, reply

from client import ChatGLMClient, Chunk, ClientError, ServerUnavailable
from client._grpc import map_grpc_error
from client._http import error_message, parse_event, parse_event_chunk, split_host_port
from client.cli import build_parser, main, run_chat, sampling_from_args
from client.params import build_generate_body, build_tensors, normalize_sampling
from client.sse import iter_sse_data

ROOT = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------- request building


def test_tensors_carry_all_sampling_inputs_with_contract_types() -> None:
    tensors = build_tensors(
        "你好",
        [("q1", "a1")],
        dict(
            max_tokens=16,
            temperature=0.7,
            top_k=5,
            top_p=0.9,
            repetition_penalty=1.1,
            seed=2**63 + 5,
            ignore_eos=True,
        ),
        stream=True,
    )
    by_name = {t.name: t for t in tensors}
    expected = {
        "text_input": ("BYTES", np.object_),
        "max_tokens": ("INT32", np.int32),
        "temperature": ("FP32", np.float32),
        "top_k": ("INT32", np.int32),
        "top_p": ("FP32", np.float32),
        "repetition_penalty": ("FP32", np.float32),
        "random_seed": ("UINT64", np.uint64),
        "ignore_eos": ("BOOL", np.bool_),
        "stream": ("BOOL", np.bool_),
        "history": ("BYTES", np.object_),
    }
    assert set(by_name) == set(expected)
    for name, (datatype, dtype) in expected.items():
        assert by_name[name].datatype == datatype, name
        assert by_name[name].array.dtype == dtype, name
        assert by_name[name].array.shape == (1,), name
    assert by_name["text_input"].array[0] == "你好".encode()
    assert by_name["random_seed"].array[0] == 2**63 + 5
    assert bool(by_name["stream"].array[0]) is True
    assert json.loads(by_name["history"].array[0].decode()) == [["q1", "a1"]]


def test_defaults_are_left_to_the_server() -> None:
    names = [t.name for t in build_tensors("hi", None, {"top_k": None}, stream=False)]
    assert names == ["text_input", "stream"]
    assert build_generate_body("hi", [], {}, stream=False) == {"text_input": "hi", "stream": False}


def test_generate_body_maps_keys_to_input_tensors() -> None:
    body = build_generate_body("q", [["a", "b"]], {"seed": 3, "temperature": 1}, stream=True)
    assert body == {
        "text_input": "q",
        "random_seed": 3,
        "temperature": 1.0,
        "stream": True,
        "history": '[["a", "b"]]',
    }
    assert json.loads(json.dumps(body, ensure_ascii=False)) == body


@pytest.mark.parametrize(
    ("kwargs", "exc"),
    [
        ({"max_token": 3}, TypeError),
        ({"seed": 1, "random_seed": 2}, TypeError),
        ({"max_tokens": 1.5}, ValueError),
        ({"max_tokens": True}, ValueError),
        ({"max_tokens": 2**31}, ValueError),
        ({"temperature": "hot"}, ValueError),
        ({"ignore_eos": 1}, ValueError),
        ({"seed": -1}, ValueError),
    ],
)
def test_bad_sampling_arguments_are_refused(kwargs: dict[str, Any], exc: type) -> None:
    with pytest.raises(exc):
        normalize_sampling(kwargs)


@pytest.mark.parametrize("history", [["just a string"], [("q",)], [("q", 3)]])
def test_bad_history_is_refused(history: Any) -> None:
    with pytest.raises(ValueError):
        build_tensors("x", history, {}, stream=False)


# ---------------------------------------------------------------- SSE parsing


def test_sse_events_split_join_and_skip_comments() -> None:
    raw = (
        b": keep-alive\r\n"
        b'data: {"text_output": "a"}\r\n'
        b"\r\n"
        b"event: message\n"
        b"data: line1\n"
        b"data:line2\n"
        b"id: 7\n"
        b"\n"
        b"\n"
        b'data: {"text_output": "\xe4\xbd\xa0"}'  # last event without a blank line
    )
    events = list(iter_sse_data(io.BytesIO(raw)))
    assert events == ['{"text_output": "a"}', "line1\nline2", '{"text_output": "你"}']


def test_sse_event_payloads() -> None:
    assert parse_event('{"model_name": "chatglm", "text_output": "好"}') == "好"
    assert parse_event('{"text_output": ""}') == ""
    with pytest.raises(ClientError, match="out of KV blocks"):
        parse_event('{"error": "out of KV blocks"}')
    with pytest.raises(ClientError, match="malformed"):
        parse_event("not json")


def test_sse_event_token_count() -> None:
    # Triton's generate JSON carries every output: token_count as a number or a list.
    assert parse_event_chunk('{"text_output": "ab", "token_count": 3}') == Chunk("ab", 3)
    assert parse_event_chunk('{"text_output": "", "token_count": [2]}') == Chunk("", 2)
    # A server without the output: one token per event (the old contract).
    assert parse_event_chunk('{"text_output": "a"}') == Chunk("a", 1)


def test_grpc_chunks_sum_token_count() -> None:
    script = Script(pieces=["a", "bcd", ""], token_counts=[1, 3, 0])
    with FakeGrpcServer(script) as fake, ChatGLMClient(fake.url, timeout=10) as c:
        assert list(c.stream_chunks("x")) == [Chunk("a", 1), Chunk("bcd", 3), Chunk("", 0)]
        assert list(c.stream("x")) == ["a", "bcd", ""]
    with FakeGrpcServer(Script(pieces=["a", "b"])) as fake, ChatGLMClient(fake.url) as c:
        assert list(c.stream_chunks("x")) == [Chunk("a", 1), Chunk("b", 1)]  # no output: 1


def test_http_chunks_sum_token_count() -> None:
    def respond(h: Any, path: str, body: dict[str, Any]) -> None:
        events = (
            b'data: {"text_output": "a", "token_count": 1}\n\n'
            b'data: {"text_output": "bc", "token_count": 2}\n\n'
        )
        reply(h, 200, "text/event-stream; charset=utf-8", events)

    with FakeHttpServer(respond) as fake, ChatGLMClient(fake.url, "http", timeout=10) as c:
        assert list(c.stream_chunks("x")) == [Chunk("a", 1), Chunk("bc", 2)]
        assert list(c.stream("x")) == ["a", "bc"]


def test_http_error_bodies() -> None:
    assert error_message(b'{"error": "bad max_tokens"}', 400, "Bad Request") == "bad max_tokens"
    assert error_message(b"plain words", 400, "Bad Request") == "plain words"
    assert error_message(b"", 500, "Internal Server Error") == "HTTP 500 Internal Server Error"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("127.0.0.1:8001", ("127.0.0.1", 8001)),
        ("http://localhost:8000/", ("localhost", 8000)),
        ("grpc://example", ("example", 9)),
        ("[::1]:8000", ("::1", 8000)),
    ],
)
def test_urls(url: str, expected: tuple[str, int]) -> None:
    assert split_host_port(url, 9) == expected


@pytest.mark.parametrize("url", ["host:notaport", "host:70000", "ftp://x:1", ""])
def test_bad_urls(url: str) -> None:
    with pytest.raises(ClientError):
        split_host_port(url, 9)


# ---------------------------------------------------------------- error mapping


class _Exc:
    def __init__(self, msg: str, status: str | None) -> None:
        self._msg, self._status = msg, status

    def message(self) -> str:
        return self._msg

    def status(self) -> str | None:
        return self._status


def test_grpc_error_mapping() -> None:
    down = map_grpc_error(_Exc("failed to connect", "StatusCode.UNAVAILABLE"), "h:1")
    assert isinstance(down, ServerUnavailable) and "h:1" in str(down)
    rejected = map_grpc_error(_Exc("max_tokens must be > 0", None))
    assert type(rejected) is ClientError and str(rejected) == "max_tokens must be > 0"


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_closed_port_is_server_unavailable(protocol: str) -> None:
    c = ChatGLMClient(f"127.0.0.1:{free_port()}", protocol=protocol, timeout=10)
    with pytest.raises(ServerUnavailable):
        c.generate("hi")
    with pytest.raises(ServerUnavailable):
        list(c.stream("hi"))
    c.close()


@pytest.mark.parametrize(("meta_shape", "sent_shape"), [([-1, 1], [1, 1]), ([1], [1])])
def test_grpc_in_stream_error_is_client_error_after_the_pieces(
    meta_shape: list[int], sent_shape: list[int]
) -> None:
    script = Script(
        pieces=["a", "b"], error="in-flight request failed: out of memory", input_shape=meta_shape
    )
    with FakeGrpcServer(script) as fake, ChatGLMClient(fake.url, timeout=10) as c:
        got: list[str] = []
        with pytest.raises(ClientError, match="out of memory") as info:
            for piece in c.stream("x", max_tokens=4):
                got.append(piece)
        assert not isinstance(info.value, ServerUnavailable)
        assert got == ["a", "b"]
        req = script.requests[0]
        names = {i.name for i in req.inputs}
        assert names == {"text_input", "max_tokens", "stream"}
        # Shapes follow the model's metadata (a batch dimension when max_batch_size > 0).
        assert all(list(i.shape) == sent_shape for i in req.inputs)
        # The client asks for the empty final response that tells it the request is done.
        assert req.parameters["triton_enable_empty_final_response"].bool_param


def test_http_rejection_carries_the_server_message() -> None:
    def respond(h: Any, path: str, body: dict[str, Any]) -> None:
        reply(h, 400, "application/json", b'{"error": "unexpected input \'bogus\'"}')

    with FakeHttpServer(respond) as fake, ChatGLMClient(fake.url, "http", timeout=10) as c:
        with pytest.raises(ClientError, match="unexpected input 'bogus'"):
            c.generate("x")
        with pytest.raises(ClientError, match="unexpected input 'bogus'"):
            list(c.stream("x"))
    assert [b["stream"] for b in fake.bodies] == [False, True]


def test_http_error_event_mid_stream() -> None:
    def respond(h: Any, path: str, body: dict[str, Any]) -> None:
        events = b'data: {"text_output": "a"}\n\ndata: {"error": "cancelled by server"}\n\n'
        reply(h, 200, "text/event-stream; charset=utf-8", events)

    with FakeHttpServer(respond) as fake, ChatGLMClient(fake.url, "http", timeout=10) as c:
        got: list[str] = []
        with pytest.raises(ClientError, match="cancelled by server"):
            for piece in c.stream("x"):
                got.append(piece)
        assert got == ["a"]


def test_http_503_is_server_unavailable() -> None:
    def respond(h: Any, path: str, body: dict[str, Any]) -> None:
        reply(h, 503, "application/json", b'{"error": "server is not ready"}')

    with FakeHttpServer(respond) as fake, ChatGLMClient(fake.url, "http", timeout=10) as c:
        with pytest.raises(ServerUnavailable, match="not ready"):
            c.generate("x")


# ---------------------------------------------------------------- CLI


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["--chat", "a prompt"],
        ["--chat", "--stream"],
        ["--top-p", "1.5", "x"],
        ["--temperature", "-1", "x"],
        ["--max-tokens", "0", "x"],
        ["--top-k", "two", "x"],
        ["--seed", str(2**64), "x"],
        ["--protocol", "udp", "x"],
    ],
)
def test_cli_argument_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert "usage:" in capsys.readouterr().err


def test_cli_flags_map_to_sampling() -> None:
    args = build_parser().parse_args(
        "--max-tokens 8 --temperature 0.5 --top-k 3 --top-p 0.8 "
        "--repetition-penalty 1.2 --seed 9 --ignore-eos x".split()
    )
    assert sampling_from_args(args) == dict(
        max_tokens=8,
        temperature=0.5,
        top_k=3,
        top_p=0.8,
        repetition_penalty=1.2,
        random_seed=9,
        ignore_eos=True,
    )
    assert sampling_from_args(build_parser().parse_args(["x"])) == {}


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_cli_server_down_one_line_no_traceback(protocol: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "client", "--protocol", protocol, "--url",
         f"127.0.0.1:{free_port()}", "hello"],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 3
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in proc.stderr


def test_cli_rejected_request_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    with FakeGrpcServer(Script(error="prompt too long: 5000 tokens > 2048")) as fake:
        code = main(["--url", fake.url, "--stream", "x"])
    assert code == 1
    err = capsys.readouterr().err
    assert err.strip() == "error: request rejected: prompt too long: 5000 tokens > 2048"


class _StubClient:
    """Records what the chat loop asks for; answers with canned text."""

    def __init__(self, fail_on: str | None = None) -> None:
        self.calls: list[tuple[str, list[tuple[str, str]], dict[str, Any]]] = []
        self.fail_on = fail_on

    def stream(self, prompt: str, history: Any = None, **sampling: Any) -> Any:
        self.calls.append((prompt, list(history or []), sampling))
        if prompt == self.fail_on:
            raise ClientError("rejected")
        return iter(["answer ", prompt])


def test_chat_loop_carries_history_and_clears_it() -> None:
    stub = _StubClient(fail_on="bad")
    lines = iter(["q1", "", "q2", "bad", "/clear", "q3", "/exit", "never"])
    out, err = io.StringIO(), io.StringIO()
    code = run_chat(stub, {"max_tokens": 5}, read=lambda _: next(lines), out=out, err=err)
    assert code == 0
    assert [(p, h) for p, h, _ in stub.calls] == [
        ("q1", []),
        ("q2", [("q1", "answer q1")]),
        ("bad", [("q1", "answer q1"), ("q2", "answer q2")]),
        ("q3", []),
    ]
    assert all(s == {"max_tokens": 5} for _, _, s in stub.calls)
    assert "answer q2" in out.getvalue() and "request rejected: rejected" in err.getvalue()


def test_chat_loop_ends_on_eof() -> None:
    def read(_: str) -> str:
        raise EOFError

    assert run_chat(_StubClient(), {}, read=read, out=io.StringIO(), err=io.StringIO()) == 0
