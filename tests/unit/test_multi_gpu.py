"""glmserve.multi_gpu: the report of scripts/gpu.sh multi, from a synthetic run folder."""

from __future__ import annotations

import json
from pathlib import Path

from glmserve import multi_gpu as mg

METRICS = """\
# HELP glm_generated_tokens_total tokens
glm_generated_tokens_total{device="0",instance="chatglm_decoder_0_0",model="chatglm_decoder",version="1"} 1000
glm_generated_tokens_total{device="1",instance="chatglm_decoder_0_0",model="chatglm_decoder",version="1"} 900
glm_requests_total{device="0",instance="chatglm_decoder_0_0",outcome="ok",version="1"} 10
glm_requests_total{device="0",instance="chatglm_decoder_0_0",outcome="error",version="1"} 0
nv_inference_count{model="chatglm_decoder"} 5
"""


def _row(conc: int, tps: float) -> dict:
    return {
        "concurrency": conc, "tokens_per_s": tps, "ttft_ms_p50": 10.0, "ttft_ms_p99": 20.0,
        "itl_ms_p50": 1.5, "itl_ms_p99": 3.0, "requests": 50, "failures": 0,
        "client_cpu_max_frac": 0.3,
    }  # fmt: skip


def _phase(work: Path, tag: str, gpus: str, instances: list[str], rows: list[dict]) -> None:
    p = work / f"phase_{tag}"
    (p / "b").mkdir(parents=True)
    (p / "gpus").write_text(gpus + "\n")
    (p / "instances.txt").write_text("\n".join(instances) + "\n")
    (p / "ready_s").write_text("12.5\n")
    (p / "smi_load.csv").write_text("0, 70000, 81559, 0\n1, 70000, 81559, 0\n")
    (p / "metrics.txt").write_text(METRICS)
    (p / "server_rc").write_text("0\n")
    for r in rows:
        (p / "b" / f"c{r['concurrency']}.json").write_text(json.dumps({"rows": [r]}))


def _instance(name: str, device: str) -> str:
    return f"chatglm_decoder instance {name}: checkpoint /ck, device {device}, dtype fp16"


def test_metric_rows_split_by_device_and_outcome():
    rows = mg.metric_rows(METRICS)
    assert rows["chatglm_decoder_0_0 on 0"] == {
        "glm_generated_tokens_total": 1000.0,
        "requests_ok": 10.0,
        "requests_error": 0.0,
    }
    assert rows["chatglm_decoder_0_0 on 1"] == {"glm_generated_tokens_total": 900.0}


def test_report_scaling_instances_and_files(tmp_path):
    work, out = tmp_path / "work", tmp_path / "out"
    out.mkdir()
    _phase(
        work,
        "0",
        "0",
        [_instance("chatglm_decoder_0_0", "cuda:0")],
        [_row(64, 1000.0), _row(512, 2000.0)],
    )
    _phase(
        work,
        "0-1",
        "0,1",
        [_instance("chatglm_decoder_0_0", "cuda:0"), _instance("chatglm_decoder_0_0", "cuda:1")],
        [_row(64, 1100.0), _row(512, 3900.0)],
    )
    (work / "cards.csv").write_text(
        "0, NVIDIA H100, 81559 MiB, 560\n1, NVIDIA H100, 81559 MiB, 560\n"
    )
    text = mg.report(work, out, "cuda", [64, 512], "25")

    phases = json.loads((out / "phases.json").read_text())
    assert [p["gpus"] for p in phases] == ["0", "0,1"]  # one GPU first
    assert [p["instances_ok"] for p in phases] == [True, True]
    assert phases[1]["instances"] == ["chatglm_decoder_0_0@cuda:0", "chatglm_decoder_0_0@cuda:1"]
    assert json.loads((out / "sweep_gpus0-1.json").read_text())["gpus"] == "0,1"
    assert (out / "multi_gpu.md").read_text() == text
    assert "Scaling (tokens/s of GPUS=0,1 over GPUS=0): C=64: 1.10x, C=512: 1.95x" in text
    assert "| 0,1 | 512 | 3,900 | 10.0 | 20.0 | 1.50/3.00 | 50 | 0 | 0.3 | 1.95x |" in text
    assert "| 0,1 | 2 (2, ok) |" in text
    assert "0:70000, 1:70000" in text


def test_skipped_phase_and_cpu_dry_run(tmp_path):
    work, out = tmp_path / "work", tmp_path / "out"
    out.mkdir()
    _phase(work, "cpu", "cpu", [_instance("chatglm_decoder_0_0", "cpu")], [_row(8, 500.0)])
    (work / "phase_0-1").mkdir()
    (work / "phase_0-1" / "gpus").write_text("0,1")
    (work / "phase_0-1" / "skipped").write_text("skipped: needs 2 GPUs, 0 visible (DEVICE=cpu)")
    text = mg.report(work, out, "cpu", [8], "8")
    assert "| cpu | 1 (1, ok) |" in text
    assert "| 0,1 | skipped: needs 2 GPUs, 0 visible (DEVICE=cpu) | | | | | |" in text
    assert "| cpu | 8 | 500 |" in text
    assert "Scaling" not in text  # one configuration only
    assert "cards (index, name, memory, driver): none" in text


def test_cli(tmp_path, capsys):
    work, out = tmp_path / "work", tmp_path / "out"
    _phase(work, "0", "0", [_instance("chatglm_decoder_0_0", "cuda:0")], [_row(64, 1000.0)])
    assert mg.main([str(work), str(out), "--conc", "64", "--dur", "5"]) == 0
    assert "# Multi-GPU serving" in capsys.readouterr().out
    assert (out / "multi_gpu.md").exists()
