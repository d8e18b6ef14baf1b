"""CI smoke tests of the load-test tools against the real server (tiny model on CPU).

- ``make load-test``'s script: Locust headless, 8 users for 20 s -> 0 failures and
  tokens/s > 0 in summary.md.
- load_tests/sweep.py with tiny numbers (the real sweep runs on the GPU machine), over
  gRPC and over HTTP (in-flight vs static over a fixed time, and a short soak).
"""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.server, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A server of its own, not the session's shared one: the load tools stop at the end of
    their duration by cancelling the streams still in flight, and tritonserver 2.51 never
    ends a cancelled `chatglm` (ensemble) inference (R5 item 1 in
    docs/reliability_requests.md), so that server's shutdown would wait for
    --exit-timeout-secs. Bounded here instead (5 s)."""
    from helpers.tritonserver import TritonServer, skip_without_server

    skip_without_server()
    log_dir = tmp_path_factory.mktemp("load_smoke")
    with TritonServer(log_dir=log_dir, extra_args=["--exit-timeout-secs=5"]) as srv:
        yield srv


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("VENV", str(Path(sys.executable).parent.parent))  # no resolve: a venv
    env.update(extra)
    return env


def test_locust_headless_8_users_20s(server: Any, tmp_path: Path) -> None:
    host, port = server.grpc_url.rsplit(":", 1)
    results = tmp_path / "run"
    proc = subprocess.run(
        ["bash", "scripts/load_test.sh"],
        cwd=ROOT,
        env=_env(
            USERS="8", SPAWN_RATE="8", DURATION="20s", HOST=host, GRPC_PORT=port,
            PROMPTS="seed", RESULTS=str(results),
        ),
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = (results / "summary.md").read_text()
    assert summary in proc.stdout  # printed too
    assert "| failures | 0 |" in summary
    tps = float(re.search(r"\| tokens/s \(aggregate\) \| ([0-9.]+) \|", summary).group(1))
    assert tps > 0
    requests = int(re.search(r"\| requests \| (\d+) \|", summary).group(1))
    assert requests > 0
    # Every seed request streamed exactly 150 tokens (Locust's average response size).
    assert "avg tokens | " in summary and ", 150.0 |" in summary
    for name in ("locust_stats.csv", "locust_stats_history.csv", "throughput_latency.png"):
        assert (results / name).stat().st_size > 0, name
    stats = (results / "locust_stats.csv").read_text()
    assert "TTFT,seed" in stats and "ITL,seed" in stats and "gRPC,generate seed" in stats


def test_sweep_quick(server: Any, tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    proc = subprocess.run(
        [sys.executable, "-m", "load_tests.sweep", "--url", server.grpc_url, "--out", str(out),
         "--concurrency", "1,2", "--duration", "2", "--warmup", "0.5", "--procs", "1",
         "--compare-concurrency", "2", "--requests", "4", "--rate", "4", "--server", "CPU tiny"],
        cwd=ROOT,
        env=_env(GLM_TOKENIZER=str(server.checkpoint_dir / "ice_text.model")),
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads((out / "sweep.json").read_text())
    assert [r["concurrency"] for r in result["sweep"]] == [1, 2]
    assert all(r["tokens_per_s"] > 0 and r["failures"] == 0 for r in result["sweep"])
    assert [r["mode"] for r in result["compare"]] == ["inflight", "static"]
    assert all(r["requests"] == 4 and r["failures"] == 0 for r in result["compare"])
    assert "In-flight / static throughput" in (out / "sweep.md").read_text()
    assert (out / "sweep_throughput.png").stat().st_size > 10_000


def test_sweep_decoder_target(server: Any, tmp_path: Path) -> None:
    """The sweep also drives chatglm_decoder alone (a server without a tokenizer)."""
    out = tmp_path / "sweep"
    proc = subprocess.run(
        [sys.executable, "-m", "load_tests.sweep", "--url", server.grpc_url, "--out", str(out),
         "--target", "chatglm_decoder", "--ids-config", str(server.checkpoint_dir / "config.json"),
         "--concurrency", "2", "--duration", "2", "--warmup", "0.5", "--procs", "1",
         "--skip-compare"],
        cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (row,) = json.loads((out / "sweep.json").read_text())["sweep"]
    # Each request returned exactly its 150 ids (a wrong count is a failure).
    assert row["failures"] == 0 and row["requests"] > 0 and row["tokens_per_s"] > 0


def test_sweep_http_compare_and_soak(server: Any, tmp_path: Path) -> None:
    """--protocol http: the ensemble over /generate_stream; the comparison over arrivals
    during a fixed time; a short soak sampling the server's memory."""
    out = tmp_path / "sweep"
    proc = subprocess.run(
        [sys.executable, "-m", "load_tests.sweep", "--protocol", "http", "--url", server.http_url,
         "--out", str(out), "--skip-sweep", "--compare-concurrency", "2", "--requests", "4",
         "--rate", "2", "--compare-seconds", "3", "--soak", "4", "--soak-concurrency", "2",
         "--sample", "1", "--warmup", "0", "--procs", "1", "--pid", str(server.process.pid)],
        cwd=ROOT,
        env=_env(GLM_TOKENIZER=str(server.checkpoint_dir / "ice_text.model")),
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads((out / "sweep.json").read_text())
    assert result["protocol"] == "http" and result["sweep"] == []
    assert [r["mode"] for r in result["compare"]] == ["inflight", "static"]
    assert all(r["requests"] > 0 and r["failures"] == 0 for r in result["compare"])
    soak = result["soak"]
    assert soak["failures"] == 0 and soak["requests"] > 0 and soak["tokens_per_s"] > 0
    assert len(soak["samples"]) >= 2 and all(s["rss_mib"] > 0 for s in soak["samples"])
    md = (out / "sweep.md").read_text()
    assert "In-flight / static throughput" in md and "## Soak (2 streams" in md


def test_soak_decoder_locust(server: Any, tmp_path: Path) -> None:
    """The Locust soak of chatglm_decoder (scripts/gpu.sh soak), 2 users for 5 s."""
    locust = Path(sys.executable).parent / "locust"
    proc = subprocess.run(
        [str(locust), "-f", "load_tests/soak_decoder.py", "--headless", "--only-summary",
         "-u", "2", "-r", "2", "-t", "5s", "--host", server.grpc_url,
         "--ids-config", str(server.checkpoint_dir / "config.json"), "--csv", str(tmp_path / "locust")],
        cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    with (tmp_path / "locust_stats.csv").open() as f:
        rows = {r["Name"]: r for r in csv.DictReader(f)}
    row = rows["generate decoder"]
    assert int(row["Request Count"]) > 0 and int(row["Failure Count"]) == 0
    assert 32 <= float(row["Average Content Size"]) <= 256  # ids per request: max_tokens
