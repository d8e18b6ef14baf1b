"""Overload: a tiny KV cache, a bounded queue, per-request timeouts.

Servers are started with start-time overrides (TritonServer(backend_config=...)
-> --backend-config=chatglm,num_kv_blocks=...,max_queue=...), the same knobs an
operator uses. Nothing here asserts durations; waits are bounded only so that a
hang fails instead of blocking the suite.
"""

from __future__ import annotations

import json
import threading

import pytest
from helpers.reliability import (
    SseStream,
    generate_ids,
    generate_text,
    http_post,
    id_tensors,
    prompt_ids,
    record,
    run_stream,
    run_threads,
    skip_without_server,
    text_tensors,
    wait_until,
)
from helpers.serving_oracles import (
    assert_engine_stopped,
    engine_settled,
    server_decode_rate,
    wait_outcome,
)
from helpers.tritonserver import TritonServer

pytestmark = pytest.mark.server

BLOCK = 16  # the engine's default block_size (tokens per KV block)
KV_BLOCKS = 12


@pytest.fixture(scope="module")
def small_kv(tmp_path_factory):
    """The whole repository on a KV cache of 12 blocks (192 tokens) and an unbounded queue."""
    skip_without_server()
    with TritonServer(
        log_dir=tmp_path_factory.mktemp("small_kv"),
        backend_config={"num_kv_blocks": KV_BLOCKS, "max_running_seqs": 16},
    ) as srv:
        yield srv


@pytest.fixture(scope="module")
def timeouts_server(tmp_path_factory):
    """Default configuration, own server: on 2.51 an ensemble request ended by its timeout can
    leave the ensemble with an in-flight inference (R5), which must not slow down the shared
    session server's shutdown. A short exit timeout bounds this server's."""
    skip_without_server()
    log_dir = tmp_path_factory.mktemp("timeouts")
    with TritonServer(log_dir=log_dir, extra_args=["--exit-timeout-secs=3"]) as srv:
        yield srv


def test_beyond_kv_capacity_requests_wait_and_complete(small_kv):
    srv = small_kv
    assert srv.metric("glm_kv_blocks_total") == KV_BLOCKS
    n, max_tokens = 10, 170  # 175 tokens = 11 of the 12 blocks each: any two overlap
    prompts = [prompt_ids(3, start=10 + 7 * i) for i in range(n)]
    need = n * -(-(len(prompts[0]) + max_tokens) // BLOCK)
    assert need > 3 * KV_BLOCKS  # together they need far more KV than there is
    alone = []
    for p in prompts:
        ids, err = generate_ids(srv.grpc_url, p, max_tokens=max_tokens, ignore_eos=True)
        assert err is None, err
        alone.append(ids)

    results: dict[int, tuple] = {}
    peak = {"kv": 0.0, "waiting": 0.0}

    barrier = threading.Barrier(n)

    def run(i):
        barrier.wait(timeout=60)
        results[i] = generate_ids(
            srv.grpc_url, prompts[i], max_tokens=max_tokens, ignore_eos=True, stream=True
        )

    def watch():
        try:
            peak["kv"] = max(peak["kv"], srv.metric("glm_kv_blocks_used"))
            peak["waiting"] = max(peak["waiting"], srv.metric("glm_waiting_sequences"))
        except (KeyError, OSError):
            pass

    done = threading.Event()

    def watcher():
        while not done.is_set():
            watch()
            done.wait(0.05)

    w = threading.Thread(target=watcher, daemon=True)
    w.start()
    try:
        run_threads(run, n, timeout=300)
    finally:
        done.set()
        w.join(10)
    for i in range(n):
        ids, err = results[i]
        assert err is None, f"request {i} failed under KV pressure: {err}"
        assert len(ids) == max_tokens
        assert ids == alone[i], f"request {i}: output differs from its solo run"
    assert peak["kv"] <= KV_BLOCKS
    srv.wait_metric("glm_kv_blocks_used", lambda v: v == 0, timeout=30)
    srv.wait_metric("glm_active_requests", lambda v: v == 0, timeout=30)
    record(
        "kv_pressure",
        requests=n,
        blocks_needed=need,
        blocks_total=KV_BLOCKS,
        peak_blocks_used=int(peak["kv"]),
        peak_waiting_seen=int(peak["waiting"]),
        failed=0,
    )


def test_request_that_can_never_fit_fails_at_once(small_kv):
    srv = small_kv
    # 5 prompt ids + 200 new tokens = 205 tokens = 13 blocks > 12 in all.
    ids, err = generate_ids(srv.grpc_url, prompt_ids(3), max_tokens=200)
    assert ids == []
    assert err is not None and "KV blocks" in err and f"only {KV_BLOCKS}" in err, err
    status, body = http_post(
        f"http://{srv.http_url}/v2/models/chatglm_decoder/generate",
        {"input_ids": prompt_ids(3), "max_tokens": 200},
    )
    assert status == 400, body
    assert "max_tokens" in json.loads(body)["error"]
    # Through the ensemble too.
    text, err = generate_text(srv.grpc_url, "你好", max_tokens=400)
    assert text == "" and err is not None and "KV blocks" in err, err
    # And what does fit still runs.
    ids, err = generate_ids(srv.grpc_url, prompt_ids(3), max_tokens=150, ignore_eos=True)
    assert err is None and len(ids) == 150


HOLD_S = 0.2  # seconds a held request must last per step of the test that needs it
LONG = 2000  # new ids of the long requests (prompt_ids(3) + 2000 fits the 2048 context)


@pytest.fixture(scope="module")
def rate(timeouts_server) -> float:
    """Tokens/s of a short request on this server: `LONG / rate` bounds from below how long a
    LONG-token request lasts, so deadlines and timeouts are sized from this machine."""
    return server_decode_rate(timeouts_server)


def test_client_deadline_cancels_and_frees(timeouts_server, rate):
    """A gRPC stream deadline (the client's timeout) ends the request on the server too: the
    engine stops it (its steps stop within a step or two of the backend counting the
    cancellation) and frees its blocks. The deadline is a quarter of the shortest time the
    request could take here, so it always comes first."""
    srv = timeouts_server
    start = engine_settled(srv)
    deadline = LONG / rate / 4
    tensors = id_tensors(prompt_ids(3), max_tokens=LONG, ignore_eos=True, stream=True)
    values, err = run_stream(srv.grpc_url, "chatglm_decoder", tensors, "output_ids",
                             stream_timeout=deadline)  # fmt: skip
    assert err is not None and "Deadline" in err, err
    at = wait_outcome(srv, "cancelled", start["glm_requests_total:cancelled"] + 1)
    end = engine_settled(srv)
    steps_left = LONG - int(at["glm_engine_steps_total"] - start["glm_engine_steps_total"])
    assert_engine_stopped(at, end, start, steps_left, rate)
    assert end["glm_requests_total:ok"] == start["glm_requests_total:ok"]
    record("client_deadline", deadline_s=round(deadline, 3), responses_before_deadline=len(values))


@pytest.mark.parametrize("model", ["chatglm", "chatglm_decoder"])
def test_request_timeout_is_honoured(timeouts_server, rate, model):
    """Triton's per-request `timeout` (microseconds; tritonclient's timeout=) ends a long
    generation with the timeout error, frees its KV blocks, and the server keeps serving.
    The timeout is a quarter of the shortest time the request could take on this machine."""
    srv = timeouts_server
    timeout_us = int(LONG / rate / 4 * 1e6)
    if model == "chatglm":
        tensors = text_tensors("你好", max_tokens=LONG - 10, ignore_eos=True, stream=True)
        output = "text_output"
    else:
        tensors = id_tensors(prompt_ids(3), max_tokens=LONG, ignore_eos=True, stream=True)
        output = "output_ids"
    values, err = run_stream(srv.grpc_url, model, tensors, output, request_timeout_us=timeout_us)
    # The decoder's "request timeout expired (timeout N us)", or Triton's own "Request timeout
    # expired" when a batcher of the ensemble saw the deadline pass first.
    assert err is not None and "timeout expired" in err.lower(), err
    srv.wait_metric("glm_active_requests", lambda v: v == 0, timeout=30)
    srv.wait_metric("glm_kv_blocks_used", lambda v: v == 0, timeout=30)
    # A generous timeout does not cut a request short.
    ids, err = generate_ids(srv.grpc_url, prompt_ids(3), max_tokens=8, ignore_eos=True)
    assert err is None and len(ids) == 8
    values, err = run_stream(
        srv.grpc_url,
        "chatglm_decoder",
        id_tensors(prompt_ids(3), max_tokens=8, ignore_eos=True),
        "output_ids",
        request_timeout_us=120_000_000,
    )
    assert err is None, err
    assert sum(v.size for v in values) == 8


# ---------------------------------------------------------------------------- bounded queue


def test_bounded_queue_answers_unavailable(tmp_path):
    skip_without_server()
    cfg = {"max_running_seqs": 1, "max_queue": 2}
    with TritonServer(log_dir=tmp_path, backend_config=cfg) as srv:
        # The running request must outlast the polls and the four rejected requests below:
        # sized from this machine's speed (2040 ids last at least 2040 / rate seconds).
        rate = server_decode_rate(srv)
        if 2040 / rate < 2 * HOLD_S:
            pytest.skip(f"at {rate:.0f} tokens/s a 2040-token request may end within "
                        f"{2 * HOLD_S}s, before the test's requests")  # fmt: skip
        long = id_tensors(prompt_ids(3), max_tokens=2040, ignore_eos=True, stream=True)
        # The three held requests go over HTTP: they are cancelled at the end (R5 item 3).
        body = {"input_ids": prompt_ids(3), "max_tokens": 2040, "ignore_eos": True, "stream": True}
        held = [SseStream(srv.http_url, "chatglm_decoder", body)]
        try:
            srv.wait_metric("glm_running_sequences", lambda v: v == 1, timeout=60, interval=0.01)
            for _ in range(2):
                held.append(SseStream(srv.http_url, "chatglm_decoder", body))
            srv.wait_metric("glm_waiting_sequences", lambda v: v == 2, timeout=60, interval=0.01)
            rejected = 0
            # Decoder directly, gRPC stream: the message.
            _, err = run_stream(srv.grpc_url, "chatglm_decoder", long, "output_ids")
            assert err is not None and "queue full" in err and "max_queue 2" in err, err
            rejected += 1
            # Through the ensemble, gRPC stream.
            _, err = generate_text(srv.grpc_url, "你好", max_tokens=4)
            assert err is not None and "queue full" in err, err
            rejected += 1
            # HTTP /generate: Triton 2.51 answers 400 for every error that a decoupled model
            # or an ensemble sends in a response (UNAVAILABLE included, R3): the message is
            # what tells "retry later". The status is recorded, the message asserted.
            h = f"http://{srv.http_url}/v2/models"
            dec_status, body = http_post(
                f"{h}/chatglm_decoder/generate", {"input_ids": prompt_ids(3), "max_tokens": 2}
            )
            assert dec_status in (400, 503) and "queue full" in body, (dec_status, body)
            ens_status, body = http_post(f"{h}/chatglm/generate", {"text_input": "hi"})
            assert ens_status in (400, 503) and "queue full" in body, (ens_status, body)
            rejected += 2
            assert srv.metric("glm_waiting_sequences") == 2  # the queue did not grow
            # Counted when the rejection is sent, which may be just after the client read it.
            srv.wait_metric(
                "glm_requests_total", lambda v: v >= rejected, labels={"outcome": "rejected"}
            )
            # The running one still streams.
            assert held[0].next()[0] == "data"
        finally:
            for s in held:
                s.close()
        srv.wait_metric("glm_active_requests", lambda v: v == 0, timeout=30)
        srv.wait_metric("glm_kv_blocks_used", lambda v: v == 0, timeout=30)
        # Room again: served.
        ids, err = generate_ids(srv.grpc_url, prompt_ids(3), max_tokens=4, ignore_eos=True)
        assert err is None and len(ids) == 4
        wait_until(lambda: srv.metric("glm_waiting_sequences") == 0, what="queue drained")
        record(
            "bounded_queue",
            max_queue=2,
            rejected=rejected,
            held=len(held),
            decoder_http=dec_status,
            ensemble_http=ens_status,
        )
        assert srv.stop() == 0
