"""Every error status of the OpenAI-compatible server, through the official ``openai`` client
where it can send the request (raw HTTP where it cannot): OpenAI's error object, the
right status, ``param`` naming the parameter, and never a stack trace.

400 invalid / unsupported / unknown parameter, 401 API key, 404 model and route, 405,
413 body size, 503 queue full (a decoder with max_running_seqs 1, max_queue 1) and Triton
unreachable, 500 a broken upstream (a fake Triton that answers garbage).
"""

from __future__ import annotations

import http.client
import json
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import openai
import pytest
from helpers.openai_server import API_KEY, OpenAIServer, raw_request, read_until
from helpers.tritonserver import TritonServer, free_port

pytestmark = pytest.mark.server

MODEL = "chatglm-tiny"
USER = [{"role": "user", "content": "你好"}]


def _status_body(url: str, method: str, path: str, body: bytes | None = None, headers=None):
    host, port = url.removeprefix("http://").rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    conn.request(method, path, body=body, headers=headers or {})
    r = conn.getresponse()
    raw = r.read()
    conn.close()
    return r.status, raw, dict(r.getheaders())


def _error(raw: bytes) -> dict:
    assert b"Traceback" not in raw and b'File "' not in raw, raw[:500]
    obj = json.loads(raw)
    assert set(obj) == {"error"} and set(obj["error"]) == {"message", "type", "param", "code"}
    return obj["error"]


CHAT_400 = [
    ({"temperature": -1}, "temperature", "invalid_value"),
    ({"top_p": 0}, "top_p", "invalid_value"),
    ({"n": 17}, "n", "invalid_value"),
    ({"n": 2, "temperature": 0}, "n", "invalid_value"),  # the decoder's rule, mapped back
    ({"seed": -1}, "seed", "invalid_value"),
    ({"stop": [str(i) for i in range(17)]}, "stop", "invalid_value"),
    ({"stop": 5}, "stop", "invalid_value"),
    ({"presence_penalty": 3}, "presence_penalty", "invalid_value"),
    ({"frequency_penalty": "high"}, "frequency_penalty", "invalid_value"),
    ({"max_tokens": 0}, "max_tokens", "invalid_value"),
    ({"max_tokens": 5000}, "max_tokens", "invalid_value"),
    ({"max_tokens": 2047}, "max_tokens", "context_length_exceeded"),
    ({"max_tokens": None, "max_completion_tokens": 2047}, "max_completion_tokens", "context_length_exceeded"),
    ({"max_tokens": 5, "max_completion_tokens": 6}, "max_completion_tokens", "invalid_value"),
    ({"top_logprobs": 3}, "top_logprobs", "invalid_value"),
    ({"logprobs": True, "top_logprobs": 21}, "top_logprobs", "invalid_value"),
    ({"logprobs": "yes"}, "logprobs", "invalid_value"),
    ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools", "unsupported_parameter"),
    ({"tool_choice": "auto"}, "tool_choice", "unsupported_parameter"),
    ({"functions": [{"name": "f"}]}, "functions", "unsupported_parameter"),
    ({"response_format": {"type": "json_object"}}, "response_format", "unsupported_parameter"),
    ({"logit_bias": {"5": 10}}, "logit_bias", "unsupported_parameter"),
    ({"modalities": ["text", "audio"]}, "modalities", "unsupported_parameter"),
    ({"stream_options": {"include_usage": True}}, "stream_options", "invalid_value"),
    ({"messages": []}, "messages", "invalid_value"),
    ({"messages": [{"role": "tool", "content": "x", "tool_call_id": "1"}]}, "messages[0].role", "unsupported_parameter"),
    ({"messages": [*USER, {"role": "assistant", "content": "hi"}]}, "messages", "invalid_value"),
    ({"messages": [*USER, {"role": "system", "content": "s"}, *USER]}, "messages[1].role", "invalid_value"),
    ({"messages": [*USER, *USER]}, "messages[1].role", "invalid_value"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}, "messages[0].content[0].type", "unsupported_parameter"),
    ({"messages": [{"role": "user", "content": "x", "name": "bob"}]}, "messages[0].name", "unsupported_parameter"),
    ({"messages": [{"role": "user", "content": "你好" * 2100}]}, "messages", "context_length_exceeded"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("extra", "param", "code"), CHAT_400, ids=[c[1] + "-" + str(i) for i, c in enumerate(CHAT_400)]
)
def test_chat_400_names_the_parameter(openai_client, extra, param, code):
    body = {"messages": USER, "max_tokens": 4, **extra}
    messages = body.pop("messages")
    with pytest.raises(openai.BadRequestError) as e:
        openai_client.chat.completions.create(model=MODEL, messages=messages, **body)
    err = _error(e.value.response.content)
    assert e.value.status_code == 400
    assert (err["param"], err["code"], err["type"]) == (param, code, "invalid_request_error")
    assert param.split("[")[0].split(".")[0] in err["message"], err


COMPLETIONS_400 = [
    ({"logprobs": 21}, "logprobs", "invalid_value"),
    ({"echo": True}, "echo", "unsupported_parameter"),
    ({"suffix": "end"}, "suffix", "unsupported_parameter"),
    ({"best_of": 3}, "best_of", "unsupported_parameter"),
    ({"prompt": ["a", "b"]}, "prompt", "unsupported_parameter"),
    ({"prompt": [1, 2, 3]}, "prompt", "unsupported_parameter"),
    ({"prompt": None}, "prompt", "invalid_value"),
    ({"max_completion_tokens": 3}, "max_completion_tokens", "unknown_parameter"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("extra", "param", "code"),
    COMPLETIONS_400,
    ids=[c[1] + "-" + str(i) for i, c in enumerate(COMPLETIONS_400)],
)
def test_completions_400_names_the_parameter(openai_server, extra, param, code):
    body = {"model": MODEL, "prompt": "hello", "max_tokens": 4, **extra}
    status, raw, _ = _status_body(
        openai_server.url,
        "POST",
        "/v1/completions",
        json.dumps(body).encode(),
        {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"},
    )
    err = _error(raw)
    assert status == 400 and (err["param"], err["code"]) == (param, code), err


def test_unknown_parameters_and_bad_json_are_refused(openai_client, openai_server):
    with pytest.raises(openai.BadRequestError) as e:
        openai_client.chat.completions.create(
            model=MODEL, messages=USER, extra_body={"frobnicate": 1}
        )
    err = _error(e.value.response.content)
    assert (err["param"], err["code"]) == ("frobnicate", "unknown_parameter")
    auth = {"Authorization": f"Bearer {API_KEY}"}
    for body, fragment in (
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "JSON object"),
        (b"", "empty"),
    ):
        status, raw, _ = _status_body(openai_server.url, "POST", "/v1/chat/completions", body, auth)
        err = _error(raw)
        assert status == 400 and fragment in err["message"] and err["param"] is None, err
    status, raw, _ = _status_body(
        openai_server.url,
        "POST",
        "/v1/chat/completions",
        json.dumps({"messages": USER}).encode(),
        auth,
    )
    assert status == 400 and _error(raw)["param"] == "model"


def test_api_key(openai_server):
    client = openai.OpenAI(base_url=openai_server.base_url, api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as e:
        client.chat.completions.create(model=MODEL, messages=USER, max_tokens=2)
    err = _error(e.value.response.content)
    assert e.value.status_code == 401 and err["code"] == "invalid_api_key"
    assert err["message"] == "Incorrect API key provided"
    with pytest.raises(openai.AuthenticationError):
        client.models.list()
    status, raw, headers = _status_body(
        openai_server.url, "GET", "/v1/models", headers={"Authorization": f"Basic {API_KEY}"}
    )
    assert status == 401 and headers.get("www-authenticate") == "Bearer"
    status, raw, _ = _status_body(openai_server.url, "GET", "/v1/models")
    assert status == 401 and "Authorization: Bearer" in _error(raw)["message"]
    # /health needs no key (probes), the right key opens everything else
    assert _status_body(openai_server.url, "GET", "/health")[0] == 200
    ok = openai.OpenAI(base_url=openai_server.base_url, api_key=API_KEY, max_retries=0)
    assert ok.chat.completions.create(model=MODEL, messages=USER, max_tokens=2).usage


def test_404_405(openai_client, openai_server):
    with pytest.raises(openai.NotFoundError) as e:
        openai_client.chat.completions.create(model="gpt-4o", messages=USER)
    err = _error(e.value.response.content)
    assert (err["param"], err["code"]) == ("model", "model_not_found") and MODEL in err["message"]
    with pytest.raises(openai.NotFoundError):
        openai_client.completions.create(model="gpt-3.5-turbo-instruct", prompt="x")
    with pytest.raises(openai.NotFoundError):
        openai_client.models.retrieve("gpt-4o")
    auth = {"Authorization": f"Bearer {API_KEY}"}
    status, raw, _ = _status_body(openai_server.url, "GET", "/v1/embeddings", headers=auth)
    assert status == 404 and _error(raw)["code"] == "not_found"
    status, raw, _ = _status_body(openai_server.url, "GET", "/v1/chat/completions", headers=auth)
    assert status == 405 and _error(raw)["code"] == "method_not_allowed"


def test_413_body_over_the_limit(openai_server):
    big = json.dumps(
        {"model": MODEL, "messages": [{"role": "user", "content": "x" * (1 << 20)}]}
    ).encode()
    for chunked in (False, True):  # declared by Content-Length, and found while reading
        declared = None if chunked else len(big)
        s = raw_request(
            openai_server.url,
            "/v1/chat/completions",
            big,
            chunked=chunked,
            declared_length=declared,
        )
        try:
            reply = read_until(s, b"}}")
        finally:
            s.close()
        head, _, body = reply.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 413"), head
        err = _error(body[body.index(b"{") : body.rindex(b"}") + 1])
        assert err["code"] == "request_too_large" and "1048576" in err["message"]


def test_503_when_the_decoders_queue_is_full(tmp_path):
    """max_running_seqs 1, max_queue 1: one request runs, one waits, the third is refused
    by the decoder ("queue full"), which the client sees as 503 (retry later), streamed
    or not. Closing the first two (client disconnects, one of them still queued) leaves
    the engine idle."""
    long = {
        "model": MODEL,
        "messages": USER,
        "max_tokens": 2000,
        "ignore_eos": True,
        "stream": True,
    }
    cfg = {"max_running_seqs": 1, "max_queue": 1, "num_threads": 1}
    with TritonServer(log_dir=tmp_path, models=["chatglm_decoder"], backend_config=cfg) as srv:
        with OpenAIServer(srv.http_url, log_dir=tmp_path) as oai:
            client = openai.OpenAI(base_url=oai.base_url, api_key=API_KEY, max_retries=0)
            refused = []
            for _ in range(5):  # a try is lost only when the running one ends first
                running = raw_request(oai.url, "/v1/chat/completions", json.dumps(long).encode())
                read_until(running, b"data: ")
                queued = raw_request(oai.url, "/v1/chat/completions", json.dumps(long).encode())
                try:
                    srv.wait_metric("glm_waiting_sequences", lambda v: v >= 1, timeout=60)
                    for stream in (False, True):
                        try:
                            client.chat.completions.create(
                                model=MODEL, messages=USER, max_tokens=2, stream=stream
                            )
                        except openai.InternalServerError as e:
                            refused.append(
                                (e.status_code, _error(e.response.content), e.response.headers)
                            )
                finally:
                    running.close()
                    queued.close()
                srv.wait_metric("glm_running_sequences", lambda v: v == 0, timeout=60)
                srv.wait_metric("glm_waiting_sequences", lambda v: v == 0, timeout=60)
                srv.wait_metric("glm_kv_blocks_used", lambda v: v == 0, timeout=60)
                if len(refused) == 2:
                    break
                refused.clear()
            assert len(refused) == 2, "the running request always ended before the third came"
            for status, err, headers in refused:
                assert status == 503 and err["code"] == "queue_full", err
                assert "queue full" in err["message"] and headers.get("retry-after") == "1"
            assert srv.metric("glm_requests_total", {"outcome": "rejected"}) >= 2


def test_503_when_triton_is_unreachable(tmp_path):
    with OpenAIServer(f"127.0.0.1:{free_port()}", log_dir=tmp_path, wait_healthy=False) as oai:
        assert oai.health_status() == 503
        client = openai.OpenAI(base_url=oai.base_url, api_key=API_KEY, max_retries=0)
        for stream in (False, True):
            with pytest.raises(openai.InternalServerError) as e:
                client.chat.completions.create(model=MODEL, messages=USER, stream=stream)
            err = _error(e.value.response.content)
            assert e.value.status_code == 503 and err["code"] == "upstream_unreachable"
            assert err["type"] == "server_error"


class _FakeTriton(BaseHTTPRequestHandler):
    """Ready, but answers generate_stream with garbage: max_tokens 1 -> a malformed first
    event; 2 -> one good event, then a malformed one; 3 -> one good event, then the end
    without the choice's last response (as tritonserver 2.51 does when it drops a
    stream's tail)."""

    def log_message(self, *args):  # quiet
        pass

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        good = {"output_ids": 5, "prev_ids": [], "is_final": False, "index": 0}
        events = [b"data: {broken\n\n"]
        if body["max_tokens"] >= 2:
            events.insert(0, b"data: " + json.dumps(good).encode() + b"\n\n")
        if body["max_tokens"] == 3:
            events.pop()
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Connection", "close")
        self.end_headers()
        for e in events:
            self.wfile.write(e)
            self.wfile.flush()


def test_500_on_a_broken_upstream_without_a_stack_trace(tmp_path):
    fake = ThreadingHTTPServer(("127.0.0.1", 0), _FakeTriton)
    thread = threading.Thread(target=fake.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"127.0.0.1:{fake.server_address[1]}"
        with OpenAIServer(url, log_dir=tmp_path) as oai:
            client = openai.OpenAI(base_url=oai.base_url, api_key=API_KEY, max_retries=0)
            for stream in (False, True):
                with pytest.raises(openai.InternalServerError) as e:
                    client.chat.completions.create(
                        model=MODEL, messages=USER, max_tokens=1, stream=stream
                    )
                err = _error(e.value.response.content)
                assert e.value.status_code == 500 and err["code"] == "internal_error", err
                assert err["type"] == "server_error" and "malformed event" in err["message"]
            # a failure after the stream began: one error event, then [DONE]
            s = raw_request(oai.url, "/v1/chat/completions", json.dumps(
                {"model": MODEL, "messages": USER, "max_tokens": 2, "stream": True}).encode())  # fmt: skip
            try:
                reply = read_until(s, b"data: [DONE]")
            finally:
                s.close()
            events = [ln[6:] for ln in reply.split(b"\n") if ln.startswith(b"data: {")]
            assert json.loads(events[-2])["choices"][0]["delta"]["content"] is not None
            assert _error(events[-1])["code"] == "internal_error"
            assert reply.index(b"data: [DONE]\n\n") > reply.index(b'{"error"')
            with pytest.raises(openai.APIError):
                list(
                    client.chat.completions.create(
                        model=MODEL, messages=USER, max_tokens=2, stream=True
                    )
                )
            # a stream that ends without the choice's last response: 502 (the client may retry)
            with pytest.raises(openai.APIStatusError) as e:
                client.chat.completions.create(model=MODEL, messages=USER, max_tokens=3)
            err = _error(e.value.response.content)
            assert e.value.status_code == 502 and err["code"] == "upstream_truncated", err
            with pytest.raises(openai.APIError) as e:
                list(
                    client.chat.completions.create(
                        model=MODEL, messages=USER, max_tokens=3, stream=True
                    )
                )
            assert "ended the answer before its end" in str(e.value)
            assert "the decoder's stream ended after 1 responses" in oai.log()
            assert "Traceback" not in urllib.request.urlopen(f"{oai.url}/health").read().decode()
    finally:
        fake.shutdown()
        fake.server_close()
