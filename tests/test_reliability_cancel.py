"""Cancellation storm: hundreds of gRPC streams on the ensemble, many cancelled at random
points (before the first token, after k tokens, by a client deadline) while the others run.

Afterwards: every KV block is free and nothing is running or waiting (custom metrics on the
metrics port), the server's thread count and RSS (/proc/<pid>/status) did not grow from
after the warm-up to after the storm beyond a generous bound, every decoder request ended
as ok or cancelled (none as error), every uncancelled stream's text equals the same prompt
run alone, and the server still stops cleanly (no request left in flight).

On tritonserver 2.51 (nvidia-pytriton 0.7.0) the last part does not hold, for reasons
outside our backend (R5 in docs/reliability_requests.md): streams cancelled mid-way leave
the ensemble `chatglm` with in-flight inferences that never end (shutdown then runs into
--exit-timeout-secs and exits 1), and concurrent gRPC stream cancellations can crash the
gRPC front end of the tritonserver binary (SIGSEGV/SIGABRT "GRPC_CALL_ERROR_TOO_MANY_OPERATIONS",
upstream triton-inference-server/server#7368, fixed by #7840 in 24.12). The full storm is
therefore xfail(strict) until the server is upgraded; the smaller test below proves our
part (the decoder sees every cancellation, frees every KV block, the others stay correct).
"""

from __future__ import annotations

import os
import random
import re
import threading
import time

import pytest
from test_reliability_common import (
    Stream,
    generate_ids,
    generate_text,
    id_tensors,
    proc_status,
    prompt_ids,
    record,
    run_threads,
    server_pid,
    skip_without_server,
    text_of,
    text_tensors,
)
from tritonclient.utils import InferenceServerException
from tritonserver import TritonServer

pytestmark = pytest.mark.server

PROMPTS = ["你好", "hello world", "写一首诗", "1 + 1 =", "What is AI?", "晚上好", "abc", "天气"]
MAX_TOKENS = 40  # uncancelled streams
LONG_TOKENS = 1500  # streams that will be cancelled: still generating when the cancel comes
STORM_LONG_TOKENS = 200  # the same in the ensemble storm (2.51 does not stop them: R5)
STORM = int(os.environ.get("RELIABILITY_STORM", "300"))
WARMUP = 60
WORKERS = 24
# Generous bounds: a leak of one thread or a few kB per stream over 300 streams shows; the
# allocator's and gRPC's own warm-up noise does not.
MAX_THREAD_GROWTH = 8
MAX_RSS_GROWTH_KB = 64 * 1024
OUTCOMES = ("ok", "cancelled", "error", "rejected")


def _plan(rng: random.Random, n: int) -> list[tuple[int, str, int]]:
    """(prompt index, how, k): how in none | before_first | after_k | deadline."""
    kinds = ["none", "none", "before_first", "after_k", "after_k", "deadline"]
    return [
        (rng.randrange(len(PROMPTS)), rng.choice(kinds), rng.randrange(1, 30)) for _ in range(n)
    ]


def _one(url: str, prompt: int, how: str, k: int) -> dict:
    n = MAX_TOKENS if how == "none" else STORM_LONG_TOKENS
    tensors = text_tensors(PROMPTS[prompt], max_tokens=n, stream=True, ignore_eos=True)
    if how == "deadline":
        try:
            s = Stream(url, "chatglm", tensors, stream_timeout=0.05 * k)
        except InferenceServerException as e:  # the deadline passed before the send
            return {"how": how, "text": "", "error": str(e), "done": False}
    else:
        s = Stream(url, "chatglm", tensors)
    try:
        if how == "before_first":
            return {"how": how, "text": "", "error": None, "done": False}
        values, err, kind = [], None, None
        while True:
            kind, value = s.next()
            if kind == "error":
                err = value
                break
            if value is not None:
                values.append(value)
            if kind == "final":
                break
            if how == "after_k" and len(values) >= k:
                break
        return {"how": how, "text": text_of(values), "error": err, "done": kind == "final"}
    finally:
        s.close(cancel=True)


def _storm(url: str, plan, results: list, workers: int = WORKERS) -> None:
    lock = threading.Lock()
    todo = list(enumerate(plan))

    def worker(_):
        while True:
            with lock:
                if not todo:
                    return
                i, (p, how, k) = todo.pop()
            results[i] = (p, _one(url, p, how, k))

    run_threads(worker, workers, timeout=600)


def _settle(srv) -> None:
    for name in ("glm_active_requests", "glm_running_sequences", "glm_waiting_sequences"):
        srv.wait_metric(name, lambda v: v == 0, timeout=60)
    srv.wait_metric("glm_kv_blocks_used", lambda v: v == 0, timeout=60)
    time.sleep(1.0)  # let gRPC finish tearing down the closed streams


def _outcomes(srv) -> dict[str, float]:
    return {o: srv.metric("glm_requests_total", {"outcome": o}) for o in OUTCOMES}


def _alone(url: str) -> list[str]:
    out = []
    for p in PROMPTS:
        text, err = generate_text(url, p, max_tokens=MAX_TOKENS, stream=True, ignore_eos=True)
        assert err is None, err
        out.append(text)
    return out


def _check_results(results, alone) -> dict[str, int]:
    by_how: dict[str, int] = {}
    for p, r in results:
        by_how[r["how"]] = by_how.get(r["how"], 0) + 1
        if r["how"] == "none":
            assert r["error"] is None, r["error"]
            assert r["done"]
            assert r["text"] == alone[p], f"prompt {PROMPTS[p]!r}: uncancelled text differs"
        elif r["how"] == "after_k":
            assert r["error"] is None, r["error"]
            # What came before the cancel is the start of the (longer) greedy text.
            short, long_ = sorted((r["text"], alone[p]), key=len)
            assert long_.startswith(short)
    return by_how


def _in_flight_left(log: str) -> int:
    counts = [int(n) for n in re.findall(r"has (\d+) in-flight inferences", log)]
    return counts[-1] if counts else 0


def _one_ids(url: str, ids: list[int], how: str, k: int) -> dict:
    n = MAX_TOKENS if how == "none" else LONG_TOKENS
    s = Stream(url, "chatglm_decoder", id_tensors(ids, max_tokens=n, stream=True,
               ignore_eos=True), "output_ids")  # fmt: skip
    try:
        if how == "before_first":
            return {"how": how, "ids": [], "error": None, "done": False}
        got, err, kind = [], None, None
        while True:
            kind, value = s.next()
            if kind == "error":
                err = value
                break
            if value is not None:
                got += [int(x) for x in value.reshape(-1)]
            if kind == "final" or (how == "after_k" and len(got) >= k):
                break
        return {"how": how, "ids": got, "error": err, "done": kind == "final"}
    finally:
        s.close(cancel=True)


def test_cancellations_reach_the_decoder_and_free_kv(tmp_path):
    """Our part, on chatglm_decoder directly (where 2.51 delivers cancellations to the
    backend) and at a scale 2.51's gRPC front end survives: 24 streams cancelled after k of
    1500 tokens and 8 right after sending, among 24 that run to the end, 6 clients at a time.
    Every cancellation reaches the engine, every KV block is freed, the others are exact."""
    skip_without_server()
    rng = random.Random(8)
    prompts = [prompt_ids(3, start=20 + 9 * i) for i in range(8)]
    with TritonServer(log_dir=tmp_path, models=["chatglm_decoder"]) as srv:
        url = srv.grpc_url
        alone = []
        for p in prompts:
            ids, err = generate_ids(url, p, max_tokens=MAX_TOKENS, ignore_eos=True)
            assert err is None, err
            alone.append(ids)
        o0 = _outcomes(srv)
        plan = [(rng.randrange(len(prompts)), how, rng.randrange(1, 20))
                for how in ["after_k"] * 24 + ["none"] * 24 + ["before_first"] * 8]  # fmt: skip
        rng.shuffle(plan)
        results: dict[int, tuple] = {}
        lock = threading.Lock()
        todo = list(enumerate(plan))

        def worker(_):
            while True:
                with lock:
                    if not todo:
                        return
                    i, (p, how, k) = todo.pop()
                results[i] = (p, _one_ids(url, prompts[p], how, k))

        run_threads(worker, 6, timeout=600)
        assert srv.process.poll() is None, "tritonserver died:\n" + srv.log_tail()
        _settle(srv)
        by_how: dict[str, int] = {}
        for p, r in results.values():
            by_how[r["how"]] = by_how.get(r["how"], 0) + 1
            assert r["error"] is None, r["error"]
            if r["how"] == "none":
                assert r["done"] and r["ids"] == alone[p]
            elif r["how"] == "after_k":
                m = min(len(r["ids"]), MAX_TOKENS)
                assert r["ids"][:m] == alone[p][:m]
        got = {k: int(_outcomes(srv)[k] - o0[k]) for k in OUTCOMES}
        # Every stream cancelled after k of 1500 tokens was cancelled in the engine.
        assert got["cancelled"] >= by_how["after_k"], got
        assert got["ok"] == by_how["none"], got
        assert got["error"] == 0 and got["rejected"] == 0, got
        assert srv.metric("glm_kv_blocks_used") == 0
        ids, err = generate_ids(url, prompts[1], max_tokens=MAX_TOKENS, ignore_eos=True)
        assert err is None and ids == alone[1]
        record("cancel_decoder", plan=by_how, decoder_outcomes=got, kv_blocks_used_after=0)
        assert srv.stop() == 0


@pytest.mark.xfail(
    strict=True,
    reason="needs: R5 in docs/reliability_requests.md (tritonserver 2.51 leaks cancelled "
    "ensemble streams and its gRPC front end can crash on cancellations)",
)
def test_cancellation_storm(tmp_path):
    skip_without_server()
    rng = random.Random(20261126)
    with TritonServer(log_dir=tmp_path) as srv:
        url = srv.grpc_url
        alone = _alone(url)
        pid = server_pid(srv)

        warm: list = [None] * WARMUP
        _storm(url, _plan(rng, WARMUP), warm)
        assert srv.process.poll() is None, "tritonserver died in the warm-up"
        _settle(srv)
        before = proc_status(pid)
        o0 = _outcomes(srv)

        results: list = [None] * STORM
        _storm(url, _plan(rng, STORM), results)
        assert srv.process.poll() is None, "tritonserver died in the storm"
        _settle(srv)
        after = proc_status(pid)
        got = {k: int(_outcomes(srv)[k] - o0[k]) for k in OUTCOMES}
        by_how = _check_results(results, alone)
        record(
            "cancel_storm",
            streams=STORM,
            warmup=WARMUP,
            workers=WORKERS,
            plan=by_how,
            decoder_outcomes=got,
            threads=f"{before['Threads']}->{after['Threads']}",
            rss_kb=f"{before['VmRSS']}->{after['VmRSS']}",
        )
        assert srv.metric("glm_kv_blocks_used") == 0
        assert got["error"] == 0 and got["rejected"] == 0, got
        assert got["ok"] >= by_how["none"]
        assert got["cancelled"] >= by_how["after_k"]
        assert after["Threads"] - before["Threads"] <= MAX_THREAD_GROWTH, (before, after)
        assert after["VmRSS"] - before["VmRSS"] <= MAX_RSS_GROWTH_KB, (before, after)
        text, err = generate_text(url, PROMPTS[0], max_tokens=MAX_TOKENS, stream=True,
                                  ignore_eos=True)  # fmt: skip
        assert err is None and text == alone[0]
        code = srv.stop()
        left = _in_flight_left(srv.log())
        record("cancel_storm_shutdown", exit_code=code, ensemble_in_flight_left=left)
        assert left == 0 and code == 0, (code, left)
