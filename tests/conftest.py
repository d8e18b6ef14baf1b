"""Shared fixtures.

`triton_server` (session scope): the real tritonserver on CPU serving the whole
model repository (chatglm ensemble, preprocessing, chatglm_decoder,
postprocessing) with the tiny demo model (models/chatglm-tiny). Attributes:
`.http_url` and `.grpc_url` ("127.0.0.1:PORT"), `.metrics_url`
("http://127.0.0.1:PORT/metrics"), `.log_path`, plus `.metric(name, labels)`,
`.wait_metric(name, predicate)`, `.log()`. Tests that need their own
configuration start one with `tritonserver.TritonServer(...)` (see its
docstring: backend_config={"num_kv_blocks": ..., "max_queue": ...}, models=...).
Tests using servers are marked `@pytest.mark.server`.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from tritonserver import DEFAULT_CHECKPOINT, TritonServer, backend_library  # noqa: E402


def server_prerequisites() -> str | None:
    """Why a server cannot start here, or None."""
    lib = backend_library()
    if not lib.exists():
        return f"{lib} is missing (run: make build)"
    if not (DEFAULT_CHECKPOINT / "model.safetensors").exists():
        return f"{DEFAULT_CHECKPOINT} is missing (run: make demo-model)"
    if not (DEFAULT_CHECKPOINT / "ice_text.model").exists():
        return f"{DEFAULT_CHECKPOINT}/ice_text.model is missing (run: make demo-model)"
    return None


@pytest.fixture(scope="session")
def triton_server(tmp_path_factory):
    why = server_prerequisites()
    if why:
        pytest.skip(f"cannot start tritonserver: {why}")
    server = TritonServer(log_dir=tmp_path_factory.mktemp("triton_server"))
    server.start()
    try:
        yield server
    finally:
        server.stop(check=False)
