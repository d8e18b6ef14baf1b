"""The load tests over HTTP: SSE events, statistics, workloads, the HTTP bench's report
format (load_tests/http_bench.py); one live smoke run of its modes."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
from helpers.client_fakes import FakeHttpServer

ROOT = Path(__file__).resolve().parents[2]

from client._http import parse_event_object  # noqa: E402
from client.errors import ClientError  # noqa: E402
from client.sse import iter_sse_data  # noqa: E402
from load_tests import http_bench as hb  # noqa: E402
from load_tests.report import legacy_row, markdown  # noqa: E402
from load_tests.runner import split  # noqa: E402
from load_tests.stats import Record, percentile, summarize  # noqa: E402
from load_tests.streaming import Stream, http_body, http_event  # noqa: E402
from load_tests.workload import (  # noqa: E402
    DECODER,
    IdsSpec,
    Request,
    poisson_arrivals,
    seed_requests,
    uniform_requests,
)


def test_percentile_interpolates() -> None:
    assert percentile([], 50) is None
    assert percentile([7.0], 99) == 7.0
    assert percentile([4.0, 1.0, 3.0, 2.0], 50) == pytest.approx(2.5)
    assert percentile(list(range(101)), 99) == pytest.approx(99.0)


def _events(*lines: bytes | str) -> list[dict[str, Any]]:
    return [parse_event_object(data) for data in iter_sse_data(lines)]


def test_sse_lines_and_token_counts() -> None:
    assert _events(b"\n") == []
    assert _events(b": comment\n") == []
    (scalar,) = _events(b'data: {"output_ids":518,"prev_ids":[],"is_final":false}\n')
    (listed,) = _events('data: {"output_ids":[1,2,3],"prev_ids":518}')
    (empty,) = _events('data: {"output_ids":[],"is_final":true}')
    assert http_event(scalar) == (1, "")  # Triton sends one id as a bare number
    assert http_event(listed) == (3, "")
    assert http_event(empty) == (0, "")
    (text,) = _events('data: {"text_output":"变","model_name":"chatglm"}')
    assert http_event(text) == (1, "变")
    with pytest.raises(ClientError, match="max_tokens: 0 is out of range"):
        _events('data: {"error":"max_tokens: 0 is out of range"}')


def test_summarize_windows_failures_and_latencies() -> None:
    t0 = 1000.0
    # Due at second 1, sent 0.5 s later, first token 1 s after it was due, ITL 10 and 30 ms.
    ok = Record(
        arrival=t0 + 1.0,
        start=t0 + 1.5,
        token_times=[t0 + 2.0, t0 + 2.01, t0 + 2.04],
        end=t0 + 2.5,
        expected=3,
    )
    short = Record(start=t0, token_times=[t0 + 0.1, t0 + 0.101], end=t0 + 1, expected=3)
    err = Record(start=t0, end=t0 + 1, error="HTTP 400")
    s = legacy_row(summarize([ok, short, err], (t0 + 1, t0 + 3), t0=t0))
    assert (s["requests"], s["failures"], s["tokens"]) == (1, 2, 5)
    assert s["tokens_per_s"] == pytest.approx(1.5)  # seconds 1 and 2 only: not second 0's 2
    assert s["tokens_per_s_whole"] == pytest.approx(2.0)  # 5 tokens / 2.5 s
    assert s["ttft_ms_p50"] == pytest.approx(1000.0)  # from arrival
    assert s["ttft_sent_ms_p50"] == pytest.approx(500.0)
    assert s["itl_ms_p50"] == pytest.approx(20.0)  # failed requests' samples left out
    assert "HTTP 400" in s["errors"] and "expected 3 tokens (ignore_eos), got 2" in s["errors"]


def test_workloads_and_bodies(tmp_path: Path) -> None:
    cfg = tmp_path / "config.json"
    cfg.write_text(
        json.dumps(
            {
                "vocab_size": 1024,
                "gmask_token_id": 681,
                "bos_token_id": 684,
                "mask_token_id": 680,
                "eos_token_id": 685,
                "pad_token_id": 3,
            }
        )
    )
    ids = IdsSpec.from_config(cfg)
    p = ids.prompt(16, random.Random(1))
    assert len(p) == 18 and p[-2:] == [681, 684]
    assert all(5 <= x < 1024 and x not in ids.special for x in p[:-2])
    (seed,) = seed_requests(ids)
    body = http_body(seed)
    assert body["max_tokens"] == 150 and body["ignore_eos"] and body["stream"]
    assert len(body["input_ids"]) == 18 and "text_input" not in body
    assert "text_input" in http_body(Request("hello", 7))
    arrivals = poisson_arrivals(None, rate=50.0, start=0.0, seed=3, until=20.0)
    assert 700 < len(arrivals) < 1300  # ~1000 expected
    assert all(a < b for a, b in zip(arrivals, arrivals[1:], strict=False))
    jobs = uniform_requests(len(arrivals), 3, ids)
    assert all(18 <= len(j.prompt) <= 1026 and 32 <= j.max_tokens <= 256 for j in jobs)
    assert split(10, 3) == [4, 3, 3] and sum(split(256, 8)) == 256


def test_markdown_tables() -> None:
    row = legacy_row(summarize([])) | {"concurrency": 4}
    md = markdown({"mode": "sweep", "rows": [row]})
    assert md.splitlines()[2].startswith("| 4 | 0 |")


def test_http_stream_counts_decoder_ids_on_one_connection() -> None:
    """A decoder reply over SSE: a bare id, then 3 merged ids; two requests, one connection."""
    events = b'data: {"output_ids":5}\n\ndata: {"output_ids":[6,7,8]}\n\n'
    ports: list[int] = []

    def respond(h: Any, path: str, body: dict[str, Any]) -> None:
        ports.append(h.client_address[1])
        h.send_response(200)
        h.send_header("Content-Type", "text/event-stream")
        h.send_header("Content-Length", str(len(events)))
        h.end_headers()
        h.wfile.write(events)

    with FakeHttpServer(respond) as fake:
        stream = Stream("http", fake.url, DECODER, timeout=10)
        recs = [stream.send(Request([1, 2, 3], 4)) for _ in range(2)]
        stream.close()
    for rec in recs:
        assert rec.failure is None and rec.tokens == 4
        assert rec.token_times[1] == rec.token_times[2] == rec.token_times[3]
    assert fake.bodies[0] == {"input_ids": [1, 2, 3], "max_tokens": 4, "ignore_eos": True,
                              "stream": True}  # fmt: skip
    assert len(set(ports)) == 1  # kept alive


@pytest.mark.server
def test_live_sweep_and_static(triton_server, tmp_path: Path) -> None:
    cfg = str(ROOT / "models" / "chatglm-tiny" / "config.json")
    common = [
        "--url",
        triton_server.http_url,
        "--config",
        cfg,
        "--out",
        str(tmp_path),
        "--procs",
        "2",
    ]
    assert hb.main(["sweep", "--conc", "2", "-d", "3", "--warmup", "1", *common]) == 0
    rows = json.loads((tmp_path / "sweep.json").read_text())["rows"]
    assert rows[0]["failures"] == 0 and rows[0]["requests"] > 0
    assert rows[0]["tokens"] == 150 * rows[0]["requests"]  # exactly 150 ids each (ignore_eos)
    assert (tmp_path / "sweep.md").read_text().count("|") > 10
    argv = ["inflight-vs-static", "--conc", "2", "--rate", "4", "-d", "3", *common]
    assert hb.main(argv) == 0
    result = json.loads((tmp_path / "inflight_vs_static.json").read_text())
    for mode in ("inflight", "static"):
        assert result[mode]["requests"] > 0 and result[mode]["failures"] == 0, mode
