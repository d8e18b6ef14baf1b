"""Shared fixtures.

`triton_server` (session scope, checked alive around each test that uses it): the
real tritonserver on CPU serving the whole
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

import re
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
        code = server.stop(check=False)
    # Shutdown waits for every inference in flight: one that never ends (a request some
    # test left open, or one the server lost) holds it until --exit-timeout-secs.
    left = shutdown_leftovers(server.log())
    if left or code != 0:
        pytest.fail(
            f"the shared tritonserver did not shut down cleanly (exit code {code}): "
            f"{left or 'see its log'}; log {server.log_path}:\n{server.log_tail(30)}",
            pytrace=False,
        )


def shutdown_leftovers(log: str) -> str:
    """What tritonserver's shutdown log says was in flight ("" when nothing was): each
    model it listed with in-flight inferences (the most it counted) and "Exit timeout
    expired". The session's server must stop with nothing in flight at all."""
    most: dict[str, int] = {}
    for model, n in re.findall(r"Model '([^']+)'[^\n]*? has (\d+) in-flight inference", log):
        most[model] = max(most.get(model, 0), int(n))
    out = [f"model '{m}' had {n} inference(s) in flight" for m, n in most.items() if n > 0]
    if "Exit timeout expired" in log:
        out.append("Exit timeout expired")
    return "; ".join(out)
