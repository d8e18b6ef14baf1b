"""Shared fixtures.

`triton_server` (session scope, checked alive around each test that uses it): the
real tritonserver on CPU serving the whole
model repository (chatglm ensemble, preprocessing, chatglm_decoder,
postprocessing) with the tiny demo model (models/chatglm-tiny). Attributes:
`.http_url` and `.grpc_url` ("127.0.0.1:PORT"), `.metrics_url`
("http://127.0.0.1:PORT/metrics"), `.log_path`, plus `.metric(name, labels)`,
`.wait_metric(name, predicate)`, `.log()`. Tests that need their own
configuration start one with `helpers.tritonserver.TritonServer(...)` (see its
docstring: backend_config={"num_kv_blocks": ..., "max_queue": ...}, models=...).
Tests using servers are marked `@pytest.mark.server`.
"""

from __future__ import annotations

import re

import pytest
from helpers.tritonserver import TritonServer, skip_without_server


@pytest.fixture(scope="session")
def triton_server(tmp_path_factory):
    skip_without_server()
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


@pytest.fixture(scope="session")
def decode_rate(triton_server) -> float:
    """Tokens/s of a short greedy request on the shared server: the fastest this machine
    decodes the tiny model (later positions are slower), so `n / decode_rate` bounds from
    below how long an n-token request lasts. Tests size their long requests, timeouts and
    caps from it instead of assuming a slow machine (tests/helpers/serving_oracles.py)."""
    from helpers.serving_oracles import server_decode_rate

    return server_decode_rate(triton_server)


def _server_exit(server: TritonServer) -> int | None:
    """The server's exit code if it is no longer running, else None."""
    if server.process is None:
        return server.returncode if server.returncode is not None else -1
    return server.process.poll()


def _fail_if_down(server: TritonServer, what: str, lines: int) -> None:
    code = _server_exit(server)
    if code is not None:
        pytest.fail(
            f"the shared tritonserver {what} (exit code {code}); "
            f"log {server.log_path}:\n{server.log_tail(lines)}",
            pytrace=False,
        )


@pytest.fixture(autouse=True)
def _shared_server_stays_up(request):
    """Around every test that uses the shared server (directly or through another fixture):
    it must be running before, and a test that kills it errors itself, with the server's
    log tail, instead of leaving the failure to whichever test comes next."""
    if "triton_server" not in request.fixturenames:
        yield
        return
    server = request.getfixturevalue("triton_server")
    _fail_if_down(server, "is not running: an earlier test killed it", 40)
    yield
    _fail_if_down(server, "died during this test", 60)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A failing test that used the shared server gets the server's log tail in its report."""
    outcome = yield
    report = outcome.get_result()
    server = getattr(item, "funcargs", {}).get("triton_server")
    if report.when == "call" and report.failed and isinstance(server, TritonServer):
        code = _server_exit(server)
        state = "running" if code is None else f"exited with {code}"
        report.sections.append(
            (f"tritonserver ({state}) log tail", server.log_tail(40) or "(empty log)")
        )


# -- the OpenAI-compatible server next to the session's tritonserver (tests/helpers/openai_server.py)


@pytest.fixture(scope="session")
def openai_server(triton_server, tmp_path_factory):
    """``python -m glmserve.openai_api`` (uvicorn, a real subprocess on a free port) in front
    of the session's tritonserver, requiring the API key ``openai_server.api_key``."""
    from helpers.openai_server import OpenAIServer

    server = OpenAIServer(triton_server.http_url, log_dir=tmp_path_factory.mktemp("openai"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def openai_client(openai_server):
    """The official ``openai`` client on the session's OpenAI server (no retries)."""
    openai = pytest.importorskip("openai", reason="the openai package is in requirements.txt")
    client = openai.OpenAI(
        base_url=openai_server.base_url, api_key=openai_server.api_key, max_retries=0, timeout=120
    )
    yield client
    client.close()
