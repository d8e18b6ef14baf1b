"""Reload: 20 cycles of unload + load of chatglm_decoder in explicit model-control mode
(--model-control-mode=explicit, the HTTP repository API), one request served after each load,
the server's host RSS and thread count (/proc/<pid>/status) not growing beyond a generous bound.
Prints the RSS series (the GPU run is in docs/reliability.md: ``bash scripts/gpu.sh reload``).
"""

from __future__ import annotations

import json
import os

import pytest
from helpers.reliability import (
    Stream,
    generate_ids,
    http_get,
    http_post,
    id_tensors,
    model_ready,
    proc_status,
    prompt_ids,
    record,
    server_pid,
    skip_without_server,
    wait_until,
)
from helpers.tritonserver import TritonServer

pytestmark = pytest.mark.server

CYCLES = int(os.environ.get("RELIABILITY_RELOAD_CYCLES", "20"))
# One engine (weights + KV cache + threads) is a few MB for the tiny model; a leak of one
# engine per cycle would add that much each time. 48 MiB over the cycles after the first
# two is generous for allocator noise and still catches a per-cycle leak of a few MB.
MAX_RSS_GROWTH_KB = 48 * 1024
MAX_THREAD_GROWTH = 4


def _unload(srv, model: str) -> None:
    status, body = http_post(f"http://{srv.http_url}/v2/repository/models/{model}/unload")
    assert status == 200, body
    wait_until(lambda: not model_ready(srv, model), timeout=60, what=f"{model} unloaded")


def _load(srv, model: str) -> None:
    status, body = http_post(f"http://{srv.http_url}/v2/repository/models/{model}/load")
    assert status == 200, body
    wait_until(lambda: model_ready(srv, model), timeout=60, what=f"{model} loaded")


def test_reload_cycles_do_not_leak(tmp_path):
    skip_without_server()
    args = ["--model-control-mode=explicit", "--load-model=chatglm_decoder"]
    with TritonServer(
        log_dir=tmp_path,
        models=["chatglm_decoder"],
        extra_args=args,
        backend_config={"num_kv_blocks": 256},
    ) as srv:
        pid = server_pid(srv)
        want, err = generate_ids(srv.grpc_url, prompt_ids(3), max_tokens=16, ignore_eos=True)
        assert err is None and len(want) == 16
        rss, threads = [], []
        for _ in range(CYCLES):
            _unload(srv, "chatglm_decoder")
            _, err = generate_ids(srv.grpc_url, prompt_ids(3), max_tokens=4)
            assert err is not None  # unloaded: refused, not hanging
            _load(srv, "chatglm_decoder")
            ids, err = generate_ids(srv.grpc_url, prompt_ids(3), max_tokens=16, ignore_eos=True)
            assert err is None, err
            assert ids == want  # a fresh engine answers exactly as the first
            s = proc_status(pid)
            rss.append(s["VmRSS"])
            threads.append(s["Threads"])
        status, index = http_post(f"http://{srv.http_url}/v2/repository/index")
        assert status == 200
        states = {m["name"]: m.get("state") for m in json.loads(index)}
        assert states.get("chatglm_decoder") == "READY", states
        assert http_get(f"http://{srv.http_url}/v2/health/live")[0] == 200
        record(
            "reload",
            cycles=CYCLES,
            rss_kb_series=",".join(str(x) for x in rss),
            threads_series=",".join(str(x) for x in threads),
        )
        base = 2 if CYCLES > 4 else 0
        assert max(rss[base:]) - rss[base] <= MAX_RSS_GROWTH_KB, rss
        assert max(threads[base:]) - threads[base] <= MAX_THREAD_GROWTH, threads
        # Unload with nothing in flight, then a clean stop.
        _unload(srv, "chatglm_decoder")
        assert "successfully unloaded 'chatglm_decoder'" in srv.log()
        assert srv.stop() == 0


def test_unload_with_requests_in_flight_answers_them(tmp_path):
    """Unloading while streams run: every stream ends (an error or its last response), none
    hangs, and the model loads again."""
    skip_without_server()
    args = ["--model-control-mode=explicit", "--load-model=chatglm_decoder"]
    with TritonServer(log_dir=tmp_path, models=["chatglm_decoder"], extra_args=args) as srv:
        long = id_tensors(prompt_ids(3), max_tokens=2000, ignore_eos=True, stream=True)
        streams = [Stream(srv.grpc_url, "chatglm_decoder", long, "output_ids") for _ in range(3)]
        try:
            for s in streams:
                assert s.next()[0] == "data"
            status, body = http_post(
                f"http://{srv.http_url}/v2/repository/models/chatglm_decoder/unload"
            )
            assert status == 200, body
            ends = [s.collect(timeout=120)[1] for s in streams]
        finally:
            for s in streams:
                s.close()
        wait_until(lambda: not model_ready(srv, "chatglm_decoder"), timeout=60, what="unloaded")
        _load(srv, "chatglm_decoder")
        ids, err = generate_ids(srv.grpc_url, prompt_ids(3), max_tokens=4, ignore_eos=True)
        assert err is None and len(ids) == 4
        record("unload_in_flight", streams=3, ended_with=[e or "final" for e in ends])
        assert srv.stop() == 0
