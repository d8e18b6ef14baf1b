"""The real tritonserver (CPU) with our backend library and model repository.

Text in / text out through the `chatglm` ensemble over gRPC streaming and the
HTTP generate endpoints, exact streaming, equality with the C++ engine run
directly, in-flight batching, cancellation, validation errors, statistics,
custom metrics and a clean shutdown.
"""

from __future__ import annotations

import json
import queue
import shutil
import subprocess
import threading

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
from helpers.reliability import (
    CONTEXT,
    TYPES,
    SseStream,
    Stream,
    skip_without_server,
    to_grpc,
    xfail_on_upstream_grpc_crash,
)
from helpers.serving_oracles import (
    assert_engine_stopped,
    engine_settled,
    reference_tokenizer,
    server_decode_rate,
    step_tolerance,
    wait_outcome,
)
from helpers.tritonserver import DEFAULT_CHECKPOINT, DEFAULT_REPO, TritonServer, venv_dir

pytestmark = pytest.mark.server

CLOSE = {"Connection": "close"}  # an idle keep-alive connection delays Triton's shutdown
PROMPTS = ["你好", "hello world", "What is the capital of China?", "写一首诗", "1 + 1 ="]


def text_inputs(text: str | bytes, history: str | None = None, **params) -> list:
    raw = text if isinstance(text, bytes) else text.encode("utf-8")
    tensors = [("text_input", "BYTES", np.array([[raw]], dtype=np.object_))]
    if history is not None:
        tensors.append(("history", "BYTES", np.array([[history.encode()]], dtype=np.object_)))
    for name, value in params.items():
        dt, np_dt = TYPES[name]
        tensors.append((name, dt, np.array([[value]], dtype=np_dt)))
    return tensors


def grpc_text(url: str, text: str, **params) -> tuple[list[str], str | None]:
    s = Stream(url, "chatglm", text_inputs(text, **params))
    try:
        values, error = s.collect(timeout=120)
    finally:
        s.close()
    return [v.reshape(-1)[0].decode("utf-8") for v in values], error


def http_generate(url: str, body: dict, model: str = "chatglm") -> requests.Response:
    return requests.post(
        f"http://{url}/v2/models/{model}/generate", json=body, timeout=120, headers=CLOSE
    )


def http_generate_stream(url: str, body: dict) -> list[str]:
    r = requests.post(
        f"http://{url}/v2/models/chatglm/generate_stream",
        json=body,
        timeout=120,
        stream=True,
        headers=CLOSE,
    )
    assert r.status_code == 200, r.text
    pieces = []
    for line in r.iter_lines(decode_unicode=True):
        if line and line.startswith("data:"):
            event = json.loads(line[5:])
            assert "error" not in event, event
            pieces.append(event["text_output"])
    return pieces


def engine_generate(prompts: list[str], max_tokens: int) -> list[str]:
    cmd = [
        str(venv_dir() / "bin" / "chatglm-generate"),
        "--checkpoint",
        str(DEFAULT_CHECKPOINT),
    ]
    cmd += ["--engine", "cpu", "--max-tokens", str(max_tokens), "--json"]
    for p in prompts:
        cmd += ["--text", p]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=300)
    return json.loads(out.stdout)["text"]


def stats(url: str, model: str) -> dict:
    r = requests.get(f"http://{url}/v2/models/{model}/stats", timeout=30, headers=CLOSE)
    r.raise_for_status()
    return r.json()["model_stats"][0]


# ---------------------------------------------------------------------------- basics


def test_backend_loaded_with_api_check(triton_server):
    log = triton_server.log()
    assert "chatglm backend initialized (TRITONBACKEND API 1." in log
    for model in ("chatglm", "chatglm_decoder", "preprocessing", "postprocessing"):
        r = requests.get(
            f"http://{triton_server.http_url}/v2/models/{model}/ready", timeout=10, headers=CLOSE
        )
        assert r.status_code == 200, model
    cfg = requests.get(
        f"http://{triton_server.http_url}/v2/models/chatglm_decoder/config",
        timeout=10,
        headers=CLOSE,
    ).json()
    assert cfg["backend"] == "chatglm"
    assert cfg["model_transaction_policy"]["decoupled"] is True
    assert "dynamic_batching" in cfg


def test_http_generate_and_generate_stream(triton_server):
    r = http_generate(triton_server.http_url, {"text_input": "你好", "max_tokens": 24})
    assert r.status_code == 200, r.text
    whole = r.json()["text_output"]
    assert isinstance(whole, str) and whole
    pieces = http_generate_stream(
        triton_server.http_url, {"text_input": "你好", "max_tokens": 24, "stream": True}
    )
    assert len(pieces) > 1
    assert "".join(pieces) == whole
    # stream=false through /generate_stream: one event with everything.
    single = http_generate_stream(triton_server.http_url, {"text_input": "你好", "max_tokens": 24})
    assert single == [whole]


def test_ensemble_reports_token_count(triton_server):
    """chatglm's token_count output: the tokens each response carries (HTTP JSON and gRPC)."""
    body = {"text_input": "你好", "max_tokens": 20, "ignore_eos": True}
    r = http_generate(triton_server.http_url, body)
    assert r.status_code == 200, r.text
    assert r.json()["token_count"] == 20 and r.json()["text_output"]
    s = requests.post(
        f"http://{triton_server.http_url}/v2/models/chatglm/generate_stream",
        json={**body, "stream": True}, timeout=120, stream=True, headers=CLOSE,
    )  # fmt: skip
    assert s.status_code == 200, s.text
    events = [
        json.loads(x[5:]) for x in s.iter_lines(decode_unicode=True) if x and x[:5] == "data:"
    ]
    assert events and all("error" not in e for e in events), events
    assert sum(e["token_count"] for e in events) == 20
    assert "".join(e["text_output"] for e in events) == r.json()["text_output"]
    inputs = text_inputs("你好", max_tokens=20, ignore_eos=True, stream=True)
    g = Stream(triton_server.grpc_url, "chatglm", inputs, output="token_count")
    try:
        counts, error = g.collect(timeout=120)
    finally:
        g.close()
    assert error is None and counts
    assert sum(int(c.reshape(-1)[0]) for c in counts) == 20


def test_grpc_stream_equals_non_stream(triton_server):
    for prompt in PROMPTS[:3]:
        streamed, err = grpc_text(triton_server.grpc_url, prompt, max_tokens=40, stream=True)
        assert err is None, err
        whole, err = grpc_text(triton_server.grpc_url, prompt, max_tokens=40, stream=False)
        assert err is None, err
        assert len(whole) == 1
        assert len(streamed) > 1
        assert "".join(streamed) == whole[0]


def test_greedy_text_equals_engine(triton_server):
    prompts = PROMPTS[:3]
    expected = engine_generate(prompts, max_tokens=48)
    for prompt, want in zip(prompts, expected, strict=True):
        r = http_generate(triton_server.http_url, {"text_input": prompt, "max_tokens": 48})
        assert r.status_code == 200, r.text
        assert r.json()["text_output"] == want, prompt
        # Explicit greedy (temperature 0) and "off" sampling knobs give the same text.
        r = http_generate(
            triton_server.http_url,
            {"text_input": prompt, "max_tokens": 48, "temperature": 0.0, "top_k": 0, "top_p": 1.0},
        )
        assert r.json()["text_output"] == want


def test_sampling_is_seeded(triton_server):
    body = {"text_input": "你好", "max_tokens": 32, "temperature": 1.0, "top_k": 50, "top_p": 0.9}
    a = http_generate(triton_server.http_url, {**body, "random_seed": 7}).json()["text_output"]
    b = http_generate(triton_server.http_url, {**body, "random_seed": 7}).json()["text_output"]
    c = http_generate(triton_server.http_url, {**body, "random_seed": 8}).json()["text_output"]
    assert a == b
    assert a != c


def test_history_changes_the_prompt(triton_server):
    plain = http_generate(triton_server.http_url, {"text_input": "你好", "max_tokens": 16})
    hist = http_generate(
        triton_server.http_url,
        {"text_input": "你好", "max_tokens": 16, "history": json.dumps([["hi", "hello"]])},
    )
    assert plain.status_code == 200 and hist.status_code == 200, hist.text
    assert plain.json()["text_output"] != hist.json()["text_output"]


def test_decoder_streams_ids_with_prev_ids(triton_server):
    ids = [5, 6, 7, 681, 684]  # tiny model: [gMASK] = 681, <sop> = 684
    tensors = [
        ("input_ids", "INT32", np.array([ids], dtype=np.int32)),
        ("max_tokens", "INT32", np.array([[20]], dtype=np.int32)),
        ("stream", "BOOL", np.array([[True]], dtype=np.bool_)),
        ("ignore_eos", "BOOL", np.array([[True]], dtype=np.bool_)),
    ]
    client = grpcclient.InferenceServerClient(triton_server.grpc_url)
    q: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: q.put((result, error)))
    try:
        client.async_stream_infer("chatglm_decoder", to_grpc(tensors), request_id="d")
        got, finals = [], []
        while not finals or not finals[-1]:
            r, e = q.get(timeout=60)
            assert e is None, e
            new = r.as_numpy("output_ids").reshape(-1).tolist()
            prev = r.as_numpy("prev_ids").reshape(-1).tolist()
            assert prev == got[-16:]  # the contract: up to 16 ids generated right before
            got += new
            finals.append(bool(r.as_numpy("is_final").reshape(-1)[0]))
    finally:
        client.stop_stream()
        client.close()
    assert len(got) == 20
    assert finals.count(True) == 1


# ---------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "body, field",
    [
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": 100000}, "max_tokens"),
        ({"temperature": -1.0}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_k": -1}, "top_k"),
        ({"repetition_penalty": 0.0}, "repetition_penalty"),
        ({"history": "not json"}, "history"),
        ({"history": json.dumps([["only question"]])}, "history"),
        ({"history": json.dumps({"q": "a"})}, "history"),
    ],
)
def test_bad_sampling_inputs_are_invalid_arg(triton_server, body, field):
    r = http_generate(triton_server.http_url, {"text_input": "你好", **body})
    assert r.status_code == 400, r.text  # INVALID_ARG
    assert field in r.json()["error"]


def test_prompt_over_context_is_invalid_arg(triton_server):
    r = http_generate(triton_server.http_url, {"text_input": "你好 " * 400, "max_tokens": 2000})
    assert r.status_code == 400, r.text
    assert "max_tokens" in r.json()["error"] and "2048" in r.json()["error"]
    r = http_generate(triton_server.http_url, {"text_input": "你好 " * 1500})
    assert r.status_code == 400, r.text
    assert "text_input" in r.json()["error"] and "2048" in r.json()["error"]


def test_non_utf8_text_is_invalid_arg(triton_server):
    s = Stream(triton_server.grpc_url, "chatglm", text_inputs(b"\xff\xfe bad"))
    try:
        _, err = s.collect(timeout=60)
    finally:
        s.close()
    assert err is not None and "text_input" in err and "UTF-8" in err


def test_missing_text_input_is_invalid_arg(triton_server):
    """Other inputs but no text_input (R1): an error naming text_input, never an empty
    success; with no inputs at all too. A good request alongside is unaffected."""
    srv = triton_server
    good = Stream(srv.grpc_url, "chatglm", text_inputs("你好", max_tokens=4))
    s = Stream(srv.grpc_url, "chatglm", [("max_tokens", "INT32", np.array([[8]], np.int32))])
    try:
        values, err = s.collect(timeout=60)
    finally:
        s.close()
    assert values == [] and err is not None, (values, err)
    assert "text_input: required input is missing" in err
    try:
        good_values, good_err = good.collect(timeout=60)
    finally:
        good.close()
    assert good_err is None and len(good_values) == 1
    r = http_generate(srv.http_url, {"max_tokens": 8})
    assert r.status_code == 400, r.text
    assert "text_input: required input is missing" in r.json()["error"]
    r = http_generate(srv.http_url, {})
    assert r.status_code == 400, r.text
    assert "text_input" in r.json()["error"]


def decoder_error(url: str, tensors, parameters=None) -> str | None:
    s = Stream(url, "chatglm_decoder", tensors, output="output_ids", parameters=parameters)
    try:
        _, err = s.collect(timeout=60)
    finally:
        s.close()
    return err


def test_decoder_rejects_bad_ids(triton_server):
    url = triton_server.grpc_url
    err = decoder_error(url, [("input_ids", "INT32", np.array([[5, 99999, 681, 684]], np.int32))])
    assert err and "input_ids" in err and "vocabulary" in err
    err = decoder_error(url, [("input_ids", "INT32", np.array([[-3, 681, 684]], np.int32))])
    assert err and "input_ids" in err
    err = decoder_error(url, [("input_ids", "INT32", np.zeros((1, 0), np.int32))])
    assert err and "input_ids" in err
    two = np.array([[5, 681, 684], [6, 681, 684]], np.int32)
    err = decoder_error(url, [("input_ids", "INT32", two)])
    assert err and "input_ids" in err and "batch" in err
    err = decoder_error(
        url,
        [
            ("input_ids", "INT32", np.array([[5, 681, 684]], np.int32)),
            ("max_tokens", "INT32", np.array([[1, 2]], np.int32)),
        ],
    )
    assert err and "max_tokens" in err


def test_bad_request_does_not_affect_others_in_batch(triton_server):
    """Good and bad requests arrive together (dynamic batching); only the bad fail."""
    good = [("input_ids", "INT32", np.array([[5, 6, 681, 684]], np.int32))]
    good += [("max_tokens", "INT32", np.array([[12]], np.int32))]
    bad = [("input_ids", "INT32", np.array([[5, 123456, 681, 684]], np.int32))]
    results: dict[int, object] = {}

    def run(i):
        s = Stream(triton_server.grpc_url, "chatglm_decoder", good if i % 2 else bad, "output_ids")
        try:
            results[i] = s.collect(timeout=60)
        finally:
            s.close()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    outs = set()
    for i, (values, err) in results.items():
        if i % 2:
            assert err is None, err
            outs.add(tuple(np.concatenate([v.reshape(-1) for v in values]).tolist()))
        else:
            assert err is not None and "input_ids" in err
    assert len(results) == 12
    assert len(outs) == 1 and len(next(iter(outs))) == 12


# ---------------------------------------------------------------------------- statistics


def test_statistics_are_truthful(triton_server):
    url = triton_server.http_url
    before = stats(url, "chatglm_decoder")
    for _ in range(3):
        assert http_generate(url, {"text_input": "hi", "max_tokens": 4}).status_code == 200
    assert http_generate(url, {"text_input": "hi", "max_tokens": 0}).status_code == 400
    after = stats(url, "chatglm_decoder")
    ok = (
        after["inference_stats"]["success"]["count"] - before["inference_stats"]["success"]["count"]
    )
    assert ok == 3  # the bad one never reached the decoder (preprocessing refused it)
    assert after["inference_count"] - before["inference_count"] == 3
    assert after["execution_count"] > before["execution_count"]
    tokens = triton_server.metric("glm_generated_tokens_total")
    assert tokens >= 12
    # Every series names its engine's device: one group's instances on several GPUs share
    # the instance name, so the device label is what keeps their series apart.
    assert triton_server.metric("glm_generated_tokens_total", {"device": "cpu"}) == tokens
    assert triton_server.metric("glm_time_to_first_token_seconds_count") >= 3


# ---------------------------------------------------------------------------- in-flight batching


def test_16_concurrent_streams_match_sequential(tmp_path):
    skip_without_server()
    prompts = [f"{PROMPTS[i % len(PROMPTS)]} #{i}" for i in range(16)]
    with TritonServer(log_dir=tmp_path, backend_config={"max_running_seqs": 16}) as srv:
        sequential = []
        for p in prompts:
            pieces, err = grpc_text(srv.grpc_url, p, max_tokens=64, stream=True, ignore_eos=True)
            assert err is None, err
            sequential.append("".join(pieces))
        assert srv.metric("glm_max_batch_size") == 1  # one at a time so far

        results: dict[int, str] = {}
        errors: list[str] = []
        barrier = threading.Barrier(16)

        def run(i):
            barrier.wait()
            pieces, err = grpc_text(srv.grpc_url, prompts[i], max_tokens=64, stream=True,
                                    ignore_eos=True)  # fmt: skip
            if err:
                errors.append(err)
            results[i] = "".join(pieces)

        threads = [threading.Thread(target=run, args=(i,)) for i in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        assert not errors, errors
        assert [results[i] for i in range(16)] == sequential
        # The engine really ran several sequences in one step.
        assert srv.metric("glm_max_batch_size") > 1
        assert srv.wait_metric("glm_active_requests", lambda v: v == 0) == 0
        assert srv.wait_metric("glm_kv_blocks_used", lambda v: v == 0) == 0
        assert srv.stop() == 0


# ---------------------------------------------------------------------------- cancellation


LONG_IDS = [
    ("input_ids", "INT32", np.array([[5, 6, 681, 684]], np.int32)),
    ("max_tokens", "INT32", np.array([[1900]], np.int32)),
    ("ignore_eos", "BOOL", np.array([[True]], np.bool_)),
    ("stream", "BOOL", np.array([[True]], np.bool_)),
]


def long_ids(tokens: int) -> list:
    """A streamed decoder request of `tokens` new ids (ignore_eos), prompt [5, 6, gMASK, sop]."""
    return LONG_IDS[:1] + [
        ("max_tokens", "INT32", np.array([[tokens]], np.int32)),
        ("ignore_eos", "BOOL", np.array([[True]], np.bool_)),
        ("stream", "BOOL", np.array([[True]], np.bool_)),
    ]


ROOM = CONTEXT - 4  # the longest request after the 4-id prompt of LONG_IDS


def test_cancel_grpc_streams_frees_kv_blocks(tmp_path):
    """Cancelling gRPC streams mid-way stops their sequences in the engine: once the backend
    has counted the last cancellation, the engine's own step counter grows by a step or two
    at most (it would run on to max_tokens if the cancel never reached the engine), nothing
    runs and every KV block is free. The requests are as long as the context allows, and
    the allowance is sized from this server's measured speed.

    On a server of its own: tritonserver 2.51's gRPC front end can crash completing a
    stream cancellation (upstream #7368; R5 in docs/reliability_requests.md). That crash,
    recognised by its signature (the faulting frame in the binary's gRPC front end, none in
    our backend), is reported as xfail, and it cannot take the session's shared server down."""
    skip_without_server()
    with TritonServer(log_dir=tmp_path) as srv:
        try:
            _cancel_four_decoder_streams(srv)
        except Exception:
            xfail_on_upstream_grpc_crash(srv)
            raise
        code = srv.stop()
        if code != 0:
            xfail_on_upstream_grpc_crash(srv)
        assert code == 0, srv.log_tail()


def _cancel_four_decoder_streams(srv: TritonServer) -> None:
    rate = server_decode_rate(srv)
    start = engine_settled(srv)
    streams = [Stream(srv.grpc_url, "chatglm_decoder", long_ids(ROOM), "output_ids")]
    streams += [Stream(srv.grpc_url, "chatglm_decoder", long_ids(ROOM), "output_ids")
                for _ in range(3)]  # fmt: skip
    cancelled0 = start["glm_requests_total:cancelled"]
    try:
        for s in streams:
            assert s.next(timeout=60)[0] == "data"
    finally:
        # One at a time (R5 item 3), each once the backend has counted the one before.
        for i, s in enumerate(streams):
            s.close(cancel=True)
            at = wait_outcome(srv, "cancelled", cancelled0 + i + 1)
    end = engine_settled(srv)
    steps_left = ROOM - int(at["glm_engine_steps_total"] - start["glm_engine_steps_total"])
    assert_engine_stopped(at, end, start, steps_left, rate)
    assert end["glm_requests_total:cancelled"] - cancelled0 == 4
    assert end["glm_requests_total:ok"] == start["glm_requests_total:ok"]
    # The server still serves.
    assert http_generate(srv.http_url, {"text_input": "hi", "max_tokens": 4}).status_code == 200


def test_request_timeout_stops_generation(triton_server, decode_rate):
    """A request's timeout (gRPC `timeout`, microseconds) stops its sequence in the engine:
    the engine runs at most a step or two past the last id the client received, and every
    id it generated before was sent. The timeout is a quarter of the shortest time this
    machine could take for the request (its length over the measured tokens/s).

    Sent to chatglm_decoder directly: through the ensemble the timeout also
    reaches the decoder, but Triton 2.51's batchers then expire the ensemble's
    pre/postprocessing steps as well, so that path is not a clean test."""
    srv = triton_server
    start = engine_settled(srv)
    timeout_us = int(ROOM / decode_rate / 4 * 1e6)
    s = Stream(srv.grpc_url, "chatglm_decoder", long_ids(ROOM), "output_ids",
               request_timeout_us=timeout_us)  # fmt: skip
    try:
        pieces, err = s.collect(timeout=60)
    finally:
        s.close()
    assert err is not None and "timeout" in err, err
    received = sum(v.size for v in pieces)
    at = wait_outcome(srv, "cancelled", start["glm_requests_total:cancelled"] + 1)
    end = engine_settled(srv)
    steps_left = ROOM - int(at["glm_engine_steps_total"] - start["glm_engine_steps_total"])
    assert_engine_stopped(at, end, start, steps_left, decode_rate)
    ran = end["glm_engine_steps_total"] - start["glm_engine_steps_total"]
    assert received <= ran <= received + step_tolerance(decode_rate), (received, ran)
    assert end["glm_generated_tokens_total"] - start["glm_generated_tokens_total"] == received


# ---------------------------------------------------------------------------- limits and shutdown


# The shortest hold (seconds) the queue tests need from their first request: a few metric
# polls 10 ms apart and one rejected request.
HOLD_S = 0.2


def test_full_queue_is_unavailable_and_waiting_requests_complete(tmp_path):
    """max_running_seqs 1, max_queue 1: one runs, one waits, the third is refused; the two
    complete. The running request is as long as the context allows, which on this machine
    lasts at least ROOM / (measured tokens/s); the test skips if that could not outlast
    its own polling."""
    skip_without_server()
    cfg = {"max_running_seqs": 1, "max_queue": 1}
    with TritonServer(log_dir=tmp_path, models=["chatglm_decoder"], backend_config=cfg) as srv:
        rate = server_decode_rate(srv)
        if ROOM / rate < HOLD_S:
            pytest.skip(f"at {rate:.0f} tokens/s a {ROOM}-token request may end within "
                        f"{HOLD_S}s, before the test's polling")  # fmt: skip
        tensors = long_ids(ROOM)[:3]  # not streamed
        streams = [Stream(srv.grpc_url, "chatglm_decoder", tensors, "output_ids")]
        srv.wait_metric("glm_running_sequences", lambda v: v == 1, interval=0.01)
        streams.append(Stream(srv.grpc_url, "chatglm_decoder", tensors, "output_ids"))
        srv.wait_metric("glm_waiting_sequences", lambda v: v == 1, interval=0.01)
        third = Stream(srv.grpc_url, "chatglm_decoder", tensors, "output_ids")
        _, err = third.collect(timeout=60)
        third.close()
        assert err is not None and "queue full" in err
        for s in streams:
            values, err = s.collect(timeout=120)
            s.close()
            assert err is None, err
            assert sum(v.size for v in values) == ROOM
        assert srv.metric("glm_requests_total", {"outcome": "rejected"}) >= 1
        r = requests.post(
            f"http://{srv.http_url}/v2/models/chatglm_decoder/generate",
            json={"input_ids": [5, 6, 681, 684], "max_tokens": 3},
            timeout=60,
            headers=CLOSE,
        )
        assert r.status_code == 200, r.text
        assert srv.stop() == 0


def test_shutdown_is_clean_and_drains_requests_in_flight(tmp_path):
    """SIGTERM with a decoder stream in flight: the request is finished, exit code 0.

    Notes on tritonserver 2.51 (not our backend): a client that keeps an idle gRPC
    stream or HTTP keep-alive connection open holds the shutdown until
    --exit-timeout-secs, so the client closes its stream once done, as clients do;
    and a `chatglm` ensemble stream caught mid-way by SIGTERM can stay counted as
    in flight (its next postprocessing step is refused while stopping), so the
    drain is shown on chatglm_decoder."""
    skip_without_server()
    srv = TritonServer(log_dir=tmp_path)
    srv.start()
    result: dict = {}
    try:
        s = Stream(srv.grpc_url, "chatglm_decoder", LONG_IDS, "output_ids")
        assert s.next(timeout=60)[0] == "data"

        def drain():
            try:
                result["rest"], result["err"] = s.collect(timeout=60)
            finally:
                s.close()

        t = threading.Thread(target=drain)
        t.start()
        code = srv.stop(timeout=90)
        t.join(60)
        assert code == 0, srv.log_tail()
    finally:
        srv.stop(check=False)
    assert result.get("err") is None, result
    # The request in flight was finished, not dropped: 1900 ids in all.
    assert 1 + sum(v.size for v in result["rest"]) == 1900
    log = srv.log()
    for bad in ("Segmentation fault", "core dumped", "terminate called", "Aborted", "SIGSEGV"):
        assert bad not in log
    for model in ("chatglm", "chatglm_decoder", "preprocessing", "postprocessing"):
        assert f"successfully unloaded '{model}'" in log


def test_engine_fault_fails_running_requests_with_internal(tmp_path):
    """Test hook (--backend-config=chatglm,allow_fault_injection=true): the request
    parameter glm_inject_fault=true makes the engine's next step fail. The running
    requests get INTERNAL, later ones UNAVAILABLE, glm_engine_healthy drops to 0,
    and the server stays up and stops cleanly."""
    skip_without_server()
    cfg = {"allow_fault_injection": True}
    with TritonServer(log_dir=tmp_path, models=["chatglm_decoder"], backend_config=cfg) as srv:
        victim = Stream(srv.grpc_url, "chatglm_decoder", LONG_IDS, "output_ids")
        assert victim.next(timeout=60)[0] == "data"
        trigger = Stream(
            srv.grpc_url,
            "chatglm_decoder",
            LONG_IDS,
            "output_ids",
            parameters={"glm_inject_fault": True},
        )
        for s in (victim, trigger):
            _, err = s.collect(timeout=60)
            s.close()
            assert err is not None and "engine error" in err and "injected fault" in err
        srv.wait_metric("glm_engine_healthy", lambda v: v == 0)
        assert srv.metric("glm_requests_total", {"outcome": "error"}) == 2
        later = Stream(srv.grpc_url, "chatglm_decoder", LONG_IDS, "output_ids")
        _, err = later.collect(timeout=60)
        later.close()
        assert err is not None and "not serving" in err
        assert srv.wait_metric("glm_kv_blocks_used", lambda v: v == 0) == 0
        # Model control mode none: the backend's unload request is refused; one warning,
        # the model stays loaded and keeps answering UNAVAILABLE at once.
        refused = "the server refused to unload model 'chatglm_decoder'"
        srv.wait_until(lambda: refused in srv.log(), what="unload refused")
        assert srv.log().count(refused) == 1
        assert srv.model_ready("chatglm_decoder")
        assert decoder_error(srv.grpc_url, SHORT_IDS) == NOT_SERVING
        assert srv.stop() == 0


NOT_SERVING = "chatglm_decoder: the engine failed and is not serving (reload the model)"


def test_fault_unloads_the_decoder_in_explicit_mode(tmp_path):
    """R4: after an engine fault the backend asks the server to unload chatglm_decoder
    (explicit model control), so /ready stops answering 200 instead of the model hanging
    on; loading it again brings a fresh, healthy engine."""
    skip_without_server()
    cfg = {"allow_fault_injection": True}
    args = ["--model-control-mode=explicit", "--load-model=chatglm_decoder"]
    with TritonServer(
        log_dir=tmp_path, models=["chatglm_decoder"], backend_config=cfg, extra_args=args
    ) as srv:
        assert srv.model_ready("chatglm_decoder")
        err = decoder_error(srv.grpc_url, LONG_IDS, parameters={"glm_inject_fault": True})
        assert err is not None and "injected fault" in err, err
        srv.wait_until(lambda: not srv.model_ready("chatglm_decoder"), 60, "not ready")
        assert "is being unloaded after an engine failure" in srv.log()
        r = requests.post(
            f"http://{srv.http_url}/v2/repository/models/chatglm_decoder/load",
            timeout=120,
            headers=CLOSE,
        )
        assert r.status_code == 200, r.text
        assert srv.model_ready("chatglm_decoder")
        assert srv.metric("glm_engine_healthy") == 1
        assert decoder_error(srv.grpc_url, SHORT_IDS) is None
        assert srv.stop() == 0


SHORT_IDS = LONG_IDS[:1] + [("max_tokens", "INT32", np.array([[3]], np.int32))]


def _fault_repo(tmp_path, enable: bool):
    """chatglm_decoder alone, its config declaring the BOOL input inject_fault (and, when
    `enable`, the model parameter enable_fault_injection=true), as R2 asked."""
    repo = tmp_path / "fault_repo"
    shutil.copytree(DEFAULT_REPO / "chatglm_decoder", repo / "chatglm_decoder")
    cfg = repo / "chatglm_decoder" / "config.pbtxt"
    text = cfg.read_text()
    assert "input [\n" in text and "parameters [\n" in text
    text = text.replace(
        "input [\n",
        'input [\n  { name: "inject_fault" data_type: TYPE_BOOL dims: [ 1 ] optional: true },\n',
        1,
    )
    if enable:
        text = text.replace(
            "parameters [\n",
            'parameters [\n  { key: "enable_fault_injection" value: { string_value: "true" } },\n',
            1,
        )
    cfg.write_text(text)
    return repo


def test_bad_cuda_tuning_parameter_fails_the_load_not_the_server(tmp_path):
    """A model parameter cuda_<option> outside the option's values (attention_one_pass takes
    0, 2, 4 or 8) fails that model's load with an error naming the parameter and the
    allowed values (the CPU back-end validates the CUDA options too); the server stays up
    and the same model loads once the parameter is right."""
    skip_without_server()
    repo = tmp_path / "repo"
    shutil.copytree(DEFAULT_REPO / "chatglm_decoder", repo / "chatglm_decoder")
    cfg = repo / "chatglm_decoder" / "config.pbtxt"
    text = cfg.read_text()
    assert "parameters [\n" in text
    param = '  {{ key: "cuda_attention_one_pass" value: {{ string_value: "{}" }} }},\n'
    cfg.write_text(text.replace("parameters [\n", "parameters [\n" + param.format("3"), 1))
    load = "/v2/repository/models/chatglm_decoder/load"
    with TritonServer(
        repo=repo, log_dir=tmp_path, extra_args=["--model-control-mode=explicit"]
    ) as srv:
        r = requests.post(f"http://{srv.http_url}{load}", timeout=120, headers=CLOSE)
        assert r.status_code == 400, r.text
        assert "cuda_attention_one_pass" in r.text and "must be 0, 2, 4 or 8" in r.text, r.text
        assert not srv.model_ready("chatglm_decoder")
        cfg.write_text(text.replace("parameters [\n", "parameters [\n" + param.format("4"), 1))
        r = requests.post(f"http://{srv.http_url}{load}", timeout=120, headers=CLOSE)
        assert r.status_code == 200, r.text
        assert srv.model_ready("chatglm_decoder")
        assert decoder_error(srv.grpc_url, SHORT_IDS) is None
        assert srv.stop() == 0


def test_fault_hook_by_input_and_model_parameter(tmp_path):
    """R2's form of the hook: the input inject_fault is refused (INVALID_ARG naming it and
    enable_fault_injection) unless the model parameter enable_fault_injection=true; with
    it the running request fails with INTERNAL."""
    skip_without_server()
    fault = [("inject_fault", "BOOL", np.array([[True]], np.bool_))]
    off = tmp_path / "off"
    with TritonServer(repo=_fault_repo(off, enable=False), log_dir=off) as srv:
        err = decoder_error(srv.grpc_url, LONG_IDS + fault)
        assert err is not None and "inject_fault" in err and "enable_fault_injection" in err, err
        assert srv.metric("glm_engine_healthy") == 1
        assert srv.stop() == 0
    on = tmp_path / "on"
    with TritonServer(repo=_fault_repo(on, enable=True), log_dir=on) as srv:
        assert decoder_error(srv.grpc_url, SHORT_IDS) is None
        err = decoder_error(srv.grpc_url, LONG_IDS + fault)
        assert err is not None and "engine error" in err and "injected fault" in err, err
        srv.wait_metric("glm_engine_healthy", lambda v: v == 0)
        assert srv.stop() == 0


def test_max_request_seconds_bounds_cancelled_ensemble_streams(tmp_path, decode_rate):
    """Triton 2.51 never tells the decoder that a `chatglm` (ensemble) stream was cancelled
    (backend_src/triton/README.md, known limits), so the mitigation is the decoder's cap
    `max_request_seconds`: a request still running that long after it arrived ends with
    UNAVAILABLE "request timeout expired (max_request_seconds ...)", and the engine stops
    it (its step counter grows by a step or two at most after the backend counted it),
    instead of running to max_tokens. The cap is a quarter of the shortest time this
    machine could take for the requests (their length over the measured tokens/s)."""
    skip_without_server()
    cap = max(round(ROOM / decode_rate / 4, 3), 0.001)
    with TritonServer(log_dir=tmp_path, backend_config={"max_request_seconds": cap}) as srv:
        # Directly on the decoder: the client sees the error.
        start = engine_settled(srv)
        err = decoder_error(srv.grpc_url, long_ids(ROOM))
        assert err is not None and f"request timeout expired (max_request_seconds {cap:g})" in err
        at = wait_outcome(srv, "cancelled", 1)
        end = engine_settled(srv)
        steps_left = ROOM - int(at["glm_engine_steps_total"] - start["glm_engine_steps_total"])
        assert_engine_stopped(at, end, start, steps_left, decode_rate)
        # Abandoned over HTTP (closing the connection cancels): 2.51's gRPC front end can
        # crash on quick successive stream cancellations (R5), which is not this test's subject.
        start = end
        room = CONTEXT - len(reference_tokenizer().encode("你好"))
        body = {"text_input": "你好", "max_tokens": room, "ignore_eos": True}
        streams = [SseStream(srv.http_url, "chatglm", body) for _ in range(4)]
        try:
            for s in streams:
                assert s.next()[0] in ("data", "error")
        finally:
            for s in streams:
                s.close()
        at = wait_outcome(srv, "cancelled", 5)
        end = engine_settled(srv)
        steps_left = room - int(at["glm_engine_steps_total"] - start["glm_engine_steps_total"])
        assert_engine_stopped(at, end, start, steps_left, decode_rate)
        assert end["glm_requests_total:cancelled"] == 5
        assert end["glm_requests_total:ok"] == 0
        assert srv.metric("glm_active_requests") == 0
        # Not asserting the exit code: 2.51's ensemble keeps counting a cancelled stream
        # (and one whose decoder step failed mid-stream) as in flight, so shutdown waits
        # for --exit-timeout-secs and exits 1 (known limit, not our backend).
        srv.stop(check=False)
