"""kv_cache_dtype=fp8 through the real tritonserver (issue 19; the CPU back-end, which holds
the FP8 cache's reference rule): `make serve KV_CACHE_DTYPE=fp8`'s backend-config reaches
the decoder (its ready line says so, its KV blocks grow), and the ensemble streams a
request of exactly the tokens asked for."""

from __future__ import annotations

import pytest
from helpers.reliability import generate_text, run_stream, text_tensors
from helpers.tritonserver import TritonServer, skip_without_server

pytestmark = pytest.mark.server


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    skip_without_server()
    cfg = {"kv_cache_dtype": "fp8", "kv_cache_bytes": 64 << 20}
    with TritonServer(log_dir=tmp_path_factory.mktemp("fp8_kv"), backend_config=cfg) as server:
        yield server


def test_the_decoder_runs_an_fp8_cache(srv):
    ready = [
        line
        for line in srv.log().splitlines()
        if "chatglm_decoder instance" in line and "ready" in line
    ]
    assert ready and "KV cache fp8" in ready[0], ready


def test_a_streamed_request_through_the_fp8_cache(srv):
    text, err = generate_text(srv.grpc_url, "你好", max_tokens=16, ignore_eos=True)
    assert err is None, err
    assert text
    counts, err = run_stream(
        srv.grpc_url,
        "chatglm",
        text_tensors("你好", max_tokens=16, ignore_eos=True),
        output="token_count",
    )
    assert err is None, err
    assert sum(int(c.reshape(-1)[0]) for c in counts) == 16
