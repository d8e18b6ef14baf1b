"""Engine faults through Triton: an injected back-end fault (glm::Engine::inject_fault) fails
only the requests in flight, with INTERNAL errors; afterwards new requests are refused at once
(UNAVAILABLE, no hang), the engine reports unhealthy (glm_engine_healthy 0), the server stays
live, and the model reports not-ready.

The trigger through Triton is R2 in docs/reliability_requests.md: a test-only model
parameter `enable_fault_injection` plus an optional BOOL input `inject_fault`, both absent
from the shipped configuration. The tests build that configuration themselves (a copy of
model_repository/chatglm_decoder with the input and the parameter added); readiness going
false is R4.
"""

from __future__ import annotations

import shutil

import pytest
from test_reliability_common import (
    Stream,
    generate_ids,
    http_get,
    http_post,
    id_tensors,
    model_ready,
    prompt_ids,
    record,
    run_stream,
    skip_without_server,
    tensor,
    wait_until,
)
from tritonserver import DEFAULT_REPO, TritonServer

pytestmark = pytest.mark.server

FAULT_INPUT = '  { name: "inject_fault" data_type: TYPE_BOOL dims: [ 1 ] optional: true },\n'
FAULT_PARAM = '  { key: "enable_fault_injection" value: { string_value: "true" } },\n'


def fault_repo(root, enabled: bool = True):
    """A repository holding chatglm_decoder with the fault-injection input (and parameter)."""
    repo = root / "fault_repo"
    if repo.exists():
        shutil.rmtree(repo)
    repo.mkdir(parents=True)
    shutil.copytree(DEFAULT_REPO / "chatglm_decoder", repo / "chatglm_decoder")
    cfg = repo / "chatglm_decoder" / "config.pbtxt"
    text = cfg.read_text()
    anchor = "input [\n"
    assert anchor in text, "config.pbtxt layout changed: update fault_repo()"
    text = text.replace(anchor, anchor + FAULT_INPUT, 1)
    if enabled:
        anchor = "parameters [\n"
        assert anchor in text, "config.pbtxt layout changed: update fault_repo()"
        text = text.replace(anchor, anchor + FAULT_PARAM, 1)
    cfg.write_text(text)
    return repo


def fault_tensors():
    return id_tensors(prompt_ids(3), max_tokens=4) + [tensor("inject_fault", [[True]], bool)]


LONG = id_tensors(prompt_ids(3), max_tokens=2000, ignore_eos=True, stream=True)


def test_fault_hook_is_off_in_the_shipped_config(triton_server):
    """The shipped chatglm_decoder has no way to trigger a fault: the input is refused."""
    srv = triton_server
    values, err = run_stream(srv.grpc_url, "chatglm_decoder", fault_tensors(), "output_ids")
    assert values == [] and err is not None and "inject_fault" in err, err
    assert srv.metric("glm_engine_healthy") == 1
    ids, err = generate_ids(srv.grpc_url, prompt_ids(3), max_tokens=4, ignore_eos=True)
    assert err is None and len(ids) == 4


@pytest.mark.xfail(strict=True, reason="needs: R2 in docs/reliability_requests.md")
def test_fault_input_without_the_parameter_is_refused(tmp_path):
    """The input declared but enable_fault_injection not set: INVALID_ARG naming the input,
    the engine stays healthy."""
    skip_without_server()
    repo = fault_repo(tmp_path, enabled=False)
    with TritonServer(repo=repo, log_dir=tmp_path) as srv:
        _, err = run_stream(srv.grpc_url, "chatglm_decoder", fault_tensors(), "output_ids")
        assert err is not None and "inject_fault" in err and "enable_fault_injection" in err
        assert srv.metric("glm_engine_healthy") == 1
        ids, err = generate_ids(srv.grpc_url, prompt_ids(3), max_tokens=4, ignore_eos=True)
        assert err is None and len(ids) == 4
        assert srv.stop() == 0


@pytest.mark.xfail(strict=True, reason="needs: R2 in docs/reliability_requests.md")
def test_injected_fault_fails_in_flight_requests_with_internal(tmp_path):
    skip_without_server()
    repo = fault_repo(tmp_path)
    with TritonServer(repo=repo, log_dir=tmp_path) as srv:
        url = srv.grpc_url
        # Finished before the fault: unaffected.
        before, err = generate_ids(url, prompt_ids(3), max_tokens=8, ignore_eos=True)
        assert err is None and len(before) == 8
        streams = [Stream(url, "chatglm_decoder", LONG, "output_ids") for _ in range(3)]
        try:
            for s in streams:
                assert s.next()[0] == "data"
            # The faulty request joins the running batch; the next step fails.
            _, err = run_stream(url, "chatglm_decoder", fault_tensors(), "output_ids")
            assert err is not None and "chatglm engine error" in err, err
            errors = [s.collect()[1] for s in streams]
        finally:
            for s in streams:
                s.close()
        for e in errors:
            assert e is not None and "chatglm engine error" in e and "fault" in e, e
        srv.wait_metric("glm_engine_healthy", lambda v: v == 0, timeout=30)
        assert srv.metric("glm_requests_total", {"outcome": "error"}) >= 4
        srv.wait_metric("glm_kv_blocks_used", lambda v: v == 0, timeout=30)
        # New requests: refused at once (bounded client wait), never hanging.
        for _ in range(3):
            _, err = generate_ids(url, prompt_ids(3), max_tokens=4)
            assert err is not None and "not serving" in err, err
        # The server itself is live and answers.
        assert http_get(f"http://{srv.http_url}/v2/health/live")[0] == 200
        record("engine_fault", in_flight_failed=4, refused_after=3, finished_before=1)
        assert srv.stop() == 0


@pytest.mark.xfail(strict=True, reason="needs: R2 and R4 in docs/reliability_requests.md")
def test_model_reports_not_ready_after_a_fault(tmp_path):
    """After the fault /v2/models/chatglm_decoder/ready stops answering 200 (explicit model
    control, as an operator would run a server that can recover by reloading the model),
    and a load brings a fresh, healthy engine back."""
    skip_without_server()
    repo = fault_repo(tmp_path)
    args = ["--model-control-mode=explicit", "--load-model=chatglm_decoder"]
    with TritonServer(repo=repo, log_dir=tmp_path, extra_args=args) as srv:
        assert model_ready(srv, "chatglm_decoder")
        _, err = run_stream(srv.grpc_url, "chatglm_decoder", fault_tensors(), "output_ids")
        assert err is not None and "chatglm engine error" in err, err
        wait_until(lambda: not model_ready(srv, "chatglm_decoder"), timeout=30,
                   what="chatglm_decoder not ready after the fault")  # fmt: skip
        assert http_get(f"http://{srv.http_url}/v2/health/live")[0] == 200
        # Recovery: load again.
        status, body = http_post(f"http://{srv.http_url}/v2/repository/models/chatglm_decoder/load")
        assert status == 200, body
        assert model_ready(srv, "chatglm_decoder")
        ids, err = generate_ids(srv.grpc_url, prompt_ids(3), max_tokens=4, ignore_eos=True)
        assert err is None and len(ids) == 4
        assert srv.stop() == 0
