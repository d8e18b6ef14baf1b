"""The backend's metrics are exact, on a server of its own (nothing else runs on it).

glm_generated_tokens_total grows by exactly the tokens the clients received (the sum of
token_count through `chatglm`, the ids through `chatglm_decoder`), glm_engine_steps_total
by exactly one step per token for requests run one at a time, glm_requests_total{outcome}
and the time-to-first-token histogram's count by the number of requests, and the engine's
gauges (running, waiting, KV blocks, active requests) return to their idle values. With
max_running_seqs 2, four concurrent requests make glm_max_batch_size exactly 2.
"""

from __future__ import annotations

import pytest
from helpers.reliability import (
    generate_ids,
    prompt_ids,
    run_stream,
    run_threads,
    skip_without_server,
    text_tensors,
)
from helpers.serving_oracles import engine_settled
from helpers.tritonserver import TritonServer

pytestmark = pytest.mark.server

TTFT = "glm_time_to_first_token_seconds_count"
GAUGES = ("glm_running_sequences", "glm_waiting_sequences", "glm_kv_blocks_used")


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    skip_without_server()
    log_dir = tmp_path_factory.mktemp("metrics_exact")
    with TritonServer(log_dir=log_dir, backend_config={"max_running_seqs": 2}) as server:
        yield server


def state(srv) -> dict[str, float]:
    snap = engine_settled(srv)
    snap[TTFT] = srv.metric(TTFT)
    snap["glm_active_requests"] = srv.metric("glm_active_requests")
    snap["glm_kv_blocks_total"] = srv.metric("glm_kv_blocks_total")
    return snap


def delta(a: dict, b: dict, name: str) -> float:
    return b.get(name, 0.0) - a.get(name, 0.0)


def ensemble_tokens(url: str, text: str, **params) -> int:
    counts, err = run_stream(url, "chatglm", text_tensors(text, **params), output="token_count")
    assert err is None, err
    return sum(int(c.reshape(-1)[0]) for c in counts)


def test_sequential_requests_are_counted_exactly(srv):
    idle = state(srv)
    for g in GAUGES + ("glm_active_requests",):
        assert idle[g] == 0, (g, idle)
    received = 0
    requests = 0
    for i, n in enumerate((7, 19, 33)):
        ids, err = generate_ids(srv.grpc_url, prompt_ids(3, start=10 + i), max_tokens=n,
                                ignore_eos=True, stream=bool(i % 2))  # fmt: skip
        assert err is None and len(ids) == n, err
        received += len(ids)
        requests += 1
    for text, n, stream in (("你好", 11, True), ("hello world", 24, False), ("写一首诗", 40, True)):
        got = ensemble_tokens(srv.grpc_url, text, max_tokens=n, stream=stream)
        assert got >= 1
        received += got
        requests += 1
    after = state(srv)
    assert delta(idle, after, "glm_generated_tokens_total") == received
    # One at a time, every engine step generated exactly one token (the prefill the first).
    assert delta(idle, after, "glm_engine_steps_total") == received
    assert delta(idle, after, "glm_requests_total:ok") == requests
    for outcome in ("cancelled", "error", "rejected"):
        assert delta(idle, after, f"glm_requests_total:{outcome}") == 0, outcome
    assert delta(idle, after, TTFT) == requests
    for g in GAUGES + ("glm_active_requests",):
        assert after[g] == idle[g], g
    assert after["glm_kv_blocks_total"] == idle["glm_kv_blocks_total"]


def test_concurrent_requests_batch_up_to_the_limit_and_count_exactly(srv):
    idle = state(srv)
    got: dict[int, int] = {}

    def one(i: int) -> None:
        ids, err = generate_ids(srv.grpc_url, prompt_ids(4, start=40 + i), max_tokens=256,
                                ignore_eos=True, stream=True)  # fmt: skip
        assert err is None, err
        got[i] = len(ids)

    run_threads(one, 4, timeout=300)
    after = state(srv)
    assert sorted(got.values()) == [256] * 4
    assert delta(idle, after, "glm_generated_tokens_total") == 4 * 256
    assert delta(idle, after, "glm_requests_total:ok") == 4
    assert delta(idle, after, TTFT) == 4
    assert srv.metric("glm_max_batch_size") == 2  # max_running_seqs
    for g in GAUGES + ("glm_active_requests",):
        assert after[g] == 0, g


def test_rejected_request_counts_as_rejected_only(srv):
    idle = state(srv)
    ids, err = generate_ids(srv.grpc_url, [5, 6, 7], max_tokens=4)  # no [gMASK] <sop>
    assert err is not None and ids == []
    after = state(srv)
    assert delta(idle, after, "glm_requests_total:rejected") == 1
    assert delta(idle, after, "glm_requests_total:ok") == 0
    assert delta(idle, after, "glm_generated_tokens_total") == 0
    assert delta(idle, after, TTFT) == 0
    for g in GAUGES + ("glm_active_requests",):
        assert after[g] == 0, g
