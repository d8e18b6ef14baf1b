"""Engine faults through Triton: an injected back-end fault (glm::Engine::inject_fault) fails
only the requests in flight, with INTERNAL errors; afterwards new requests are refused at once
(UNAVAILABLE, no hang), the engine reports unhealthy (glm_engine_healthy 0), the other models
and the server stay up, and the model reports not-ready.

The trigger is the backend's test hook: `--backend-config=chatglm,allow_fault_injection=true`
(command line only) lets a request carrying the parameter `glm_inject_fault=true` make the
engine's next step fail. Readiness going false is R4 in docs/reliability_requests.md (done:
in explicit model-control mode the backend asks the server to unload the faulted model).
"""

from __future__ import annotations

import pytest
from helpers.reliability import (
    Stream,
    generate_ids,
    generate_text,
    http_get,
    http_post,
    id_tensors,
    model_ready,
    prompt_ids,
    record,
    run_stream,
    skip_without_server,
    wait_until,
)
from helpers.tritonserver import TritonServer

pytestmark = pytest.mark.server

HOOK = {"allow_fault_injection": True}
UNLOADING = "is being unloaded after an engine failure"  # backend_src/triton/instance.cc
FAULT = {"glm_inject_fault": True}
LONG = id_tensors(prompt_ids(3), max_tokens=2000, ignore_eos=True, stream=True)


def _trigger(url: str) -> str | None:
    """Sends the faulty request (it joins the running batch); -> its error."""
    tensors = id_tensors(prompt_ids(4), max_tokens=50, ignore_eos=True)
    _, err = run_stream(url, "chatglm_decoder", tensors, "output_ids", parameters=FAULT)
    return err


def test_fault_hook_is_off_by_default(triton_server):
    """Without the command-line switch the request parameter does nothing: served normally,
    the engine stays healthy."""
    srv = triton_server
    tensors = id_tensors(prompt_ids(3), max_tokens=4, ignore_eos=True)
    values, err = run_stream(srv.grpc_url, "chatglm_decoder", tensors, "output_ids",
                             parameters=FAULT)  # fmt: skip
    assert err is None, err
    assert sum(v.size for v in values) == 4
    assert srv.metric("glm_engine_healthy") == 1
    assert "injecting an engine fault" not in srv.log()


def test_injected_fault_fails_in_flight_requests_with_internal(tmp_path):
    skip_without_server()
    with TritonServer(log_dir=tmp_path, backend_config=HOOK) as srv:
        url = srv.grpc_url
        # Finished before the fault: unaffected.
        before, err = generate_ids(url, prompt_ids(3), max_tokens=8, ignore_eos=True)
        assert err is None and len(before) == 8
        text_before, err = generate_text(url, "你好", max_tokens=8)
        assert err is None
        streams = [Stream(url, "chatglm_decoder", LONG, "output_ids") for _ in range(3)]
        try:
            for s in streams:
                assert s.next()[0] == "data"
            err = _trigger(url)
            assert err is not None and "chatglm engine error" in err and "fault" in err, err
            errors = [s.collect()[1] for s in streams]
        finally:
            for s in streams:
                s.close()
        for e in errors:
            assert e is not None and "chatglm engine error" in e and "fault" in e, e
        srv.wait_metric("glm_engine_healthy", lambda v: v == 0, timeout=30)
        assert srv.metric("glm_requests_total", {"outcome": "error"}) == 4
        srv.wait_metric("glm_kv_blocks_used", lambda v: v == 0, timeout=30)
        srv.wait_metric("glm_active_requests", lambda v: v == 0, timeout=30)
        # New requests: refused at once (bounded client wait), never hanging; through the
        # ensemble too.
        for _ in range(3):
            _, err = generate_ids(url, prompt_ids(3), max_tokens=4)
            assert err is not None and "not serving" in err, err
        _, err = generate_text(url, "你好", max_tokens=4)
        assert err is not None and "not serving" in err, err
        # Everything else is up.
        assert http_get(f"http://{srv.http_url}/v2/health/live")[0] == 200
        for model in ("preprocessing", "postprocessing"):
            assert model_ready(srv, model), model
        record("engine_fault", in_flight_failed=4, refused_after=4, finished_before=2)
        assert srv.stop() == 0
    log = srv.log()
    for bad in ("Segmentation fault", "terminate called", "Signal (11)", "Signal (6)"):
        assert bad not in log


def test_model_reports_not_ready_after_a_fault(tmp_path):
    """After the fault /v2/models/chatglm_decoder/ready stops answering 200 (explicit model
    control, as an operator would run a server that can recover by reloading the model),
    and a load brings a fresh, healthy engine back."""
    skip_without_server()
    args = ["--model-control-mode=explicit", "--load-model=chatglm_decoder"]
    with TritonServer(
        log_dir=tmp_path, models=["chatglm_decoder"], extra_args=args, backend_config=HOOK
    ) as srv:
        assert model_ready(srv, "chatglm_decoder")
        err = _trigger(srv.grpc_url)
        assert err is not None and "chatglm engine error" in err, err
        wait_until(lambda: not model_ready(srv, "chatglm_decoder"), timeout=10,
                   what="chatglm_decoder not ready after the fault")  # fmt: skip
        assert http_get(f"http://{srv.http_url}/v2/health/live")[0] == 200
        # Recovery: load again.
        status, body = http_post(f"http://{srv.http_url}/v2/repository/models/chatglm_decoder/load")
        assert status == 200, body
        assert model_ready(srv, "chatglm_decoder")
        ids, err = generate_ids(srv.grpc_url, prompt_ids(3), max_tokens=4, ignore_eos=True)
        assert err is None and len(ids) == 4
        assert srv.stop() == 0


def test_reload_recovers_after_a_fault(tmp_path):
    """Explicit model control: after the fault the backend unloads the model by itself (R4; its
    metrics go with it, so glm_engine_healthy == 0 cannot be observed here); loading it again
    gives a fresh, healthy engine that serves."""
    skip_without_server()
    args = ["--model-control-mode=explicit", "--load-model=chatglm_decoder"]
    with TritonServer(
        log_dir=tmp_path, models=["chatglm_decoder"], extra_args=args, backend_config=HOOK
    ) as srv:
        err = _trigger(srv.grpc_url)
        assert err is not None and "chatglm engine error" in err, err
        wait_until(lambda: UNLOADING in srv.log(), timeout=30,
                   what=f"the backend's log line {UNLOADING!r}")  # fmt: skip
        wait_until(lambda: not model_ready(srv, "chatglm_decoder"), timeout=60, what="unloaded")
        h = f"http://{srv.http_url}/v2/repository/models/chatglm_decoder"
        assert http_post(f"{h}/load")[0] == 200
        wait_until(lambda: model_ready(srv, "chatglm_decoder"), timeout=60, what="loaded")
        srv.wait_metric("glm_engine_healthy", lambda v: v == 1, timeout=30)
        ids, err = generate_ids(srv.grpc_url, prompt_ids(3), max_tokens=4, ignore_eos=True)
        assert err is None and len(ids) == 4
        assert srv.stop() == 0
