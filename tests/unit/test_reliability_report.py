"""glmserve.reliability: the soak summary and the reload growth check (scripts/gpu.sh)."""

from __future__ import annotations

import csv
from pathlib import Path

from glmserve import reliability as rel

SAMPLE_FIELDS = [
    "t_s",
    "rss_kb",
    "threads",
    "gpu_mib",
    "tokens_total",
    "kv_blocks_used",
    "active_requests",
]


def _write_csv(path: Path, fields: list[str], rows: list[dict]) -> None:
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)


def _sample(t: int, rss_mib: int, tokens: int, gpu: str = "") -> dict:
    return {
        "t_s": t, "rss_kb": rss_mib * 1024, "threads": 30, "gpu_mib": gpu,
        "tokens_total": tokens, "kv_blocks_used": 0, "active_requests": 0,
    }  # fmt: skip


def test_tokens_per_minute():
    rows = [{"t_s": str(t), "tokens_total": str(t * 100)} for t in (0, 30, 60, 90, 120, 130)]
    assert rel.tokens_per_minute(rows) == [100.0, 100.0, 100.0]


def test_soak_summary_line_and_file(tmp_path):
    _write_csv(
        tmp_path / "samples.csv",
        SAMPLE_FIELDS,
        [_sample(0, 40, 0, "900"), _sample(60, 50, 6000, "1000"), _sample(120, 52, 18000, "1000")],
    )
    _write_csv(
        tmp_path / "locust_stats.csv",
        ["Name", "Request Count", "Failure Count"],
        [{"Name": "generate", "Request Count": 7, "Failure Count": 0},
         {"Name": "Aggregated", "Request Count": 9, "Failure Count": 1}],
    )  # fmt: skip
    assert rel.main(["soak-summary", str(tmp_path)]) == 0
    line = (tmp_path / "soak_summary.txt").read_text().strip()
    assert line == (
        "requests 9, failures 1; RSS 50 -> 52 MiB; threads 30 -> 30; "
        "GPU memory 1000 -> 1000 MiB; tokens/s per minute 100, 200"
    )


def test_soak_summary_without_samples(tmp_path):
    _write_csv(tmp_path / "samples.csv", SAMPLE_FIELDS, [])
    assert rel.main(["soak-summary", str(tmp_path)]) == 0
    assert (tmp_path / "soak_summary.txt").read_text() == "requests 0, failures 0; no samples\n"


def _reload_rows(rss_mib: list[int], gpu: list[str]) -> list[dict[str, str]]:
    return [
        {"cycle": str(i), "rss_kb": str(r * 1024), "threads": "30", "gpu_mib": g}
        for i, (r, g) in enumerate(zip(rss_mib, gpu, strict=True))
    ]


def test_reload_growth_bounds():
    # cycles 0 and 1 are left out: the first loads settle the allocator
    ok, msg = rel.reload_growth(_reload_rows([10, 90, 100, 120, 160], [""] * 5), 64, 256)
    assert ok and msg == "reload: 4 cycles, RSS 100 -> max 160 MiB"
    ok, msg = rel.reload_growth(_reload_rows([10, 90, 100, 120, 170], [""] * 5), 64, 256)
    assert not ok and msg.endswith("GROWTH BEYOND BOUND")
    gpu = ["1000", "1000", "1000", "1100", "1300"]
    ok, msg = rel.reload_growth(_reload_rows([100] * 5, gpu), 64, 256)
    assert not ok and "GPU memory 1000 -> max 1300 MiB" in msg


def test_reload_check_cli(tmp_path):
    f = tmp_path / "reload.csv"
    _write_csv(f, ["cycle", "rss_kb", "threads", "gpu_mib"], _reload_rows([100] * 4, [""] * 4))
    assert rel.main(["reload-check", str(f)]) == 0
    _write_csv(
        f, ["cycle", "rss_kb", "threads", "gpu_mib"], _reload_rows([100, 100, 100, 200], [""] * 4)
    )
    assert rel.main(["reload-check", str(f), "--rss-bound-mb", "64"]) == 1
