"""scripts/gpu.sh, the GPU task runner: it parses, lists its tasks, refuses unknown ones,
and its serving tasks run end to end on the CPU (DEVICE=cpu dry runs against make's build
and venv). The GPU runs themselves need a GPU machine (docs/gpu_tasks.md)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from helpers.tritonserver import build_dir, free_port, skip_without_server, venv_dir

ROOT = Path(__file__).resolve().parents[2]
GPU_SH = ROOT / "scripts" / "gpu.sh"
LIB_SH = ROOT / "scripts" / "lib.sh"
REMOVED = [
    "gpu_check.sh", "gpu_diag.sh", "gpu_int8.sh", "gpu_multi.sh", "gpu_serve_int8.sh",
    "gpu_serving.sh", "gpu_soak.sh", "gpu_triton_e2e.sh", "triton_gpu_fullsize.sh",
    "reliability_reload.sh", "reliability_soak.sh",
]  # fmt: skip


def _tasks() -> list[str]:
    """The task names: the task_* functions of gpu.sh, dashes for underscores."""
    return [m.replace("_", "-") for m in re.findall(r"^task_(\w+)\(\)", GPU_SH.read_text(), re.M)]


def _gpu_sh(*args: str, env: dict[str, str] | None = None, timeout: float = 120):
    return subprocess.run(
        ["bash", str(GPU_SH), *args],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_scripts_parse():
    for script in (GPU_SH, LIB_SH):
        proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
def test_shellcheck_clean():
    proc = subprocess.run(
        ["shellcheck", "-x", "scripts/gpu.sh", "scripts/lib.sh"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout


def test_help_lists_every_task_and_the_docs_table_too():
    tasks = _tasks()
    assert {
        "build",
        "kernels",
        "tests",
        "bench",
        "int8-bench",
        "serve-int8",
        "multi",
        "soak",
    } <= set(tasks)
    proc = _gpu_sh("help")
    assert proc.returncode == 0
    doc = (ROOT / "docs" / "gpu_tasks.md").read_text()
    for t in tasks:
        assert re.search(rf"^  {re.escape(t)}\b", proc.stdout, re.M) or f" {t} " in proc.stdout, t
        assert f"`{t}`" in doc, f"docs/gpu_tasks.md does not describe the task {t}"


def test_unknown_task_is_refused_before_anything_runs(tmp_path):
    proc = _gpu_sh("kernels", "no-such-task", env={"OUT": str(tmp_path / "out")})
    assert proc.returncode == 2 and "unknown task 'no-such-task'" in proc.stderr
    assert not (tmp_path / "out").exists()  # nothing built, nothing run


def test_no_references_to_removed_scripts_or_the_lab():
    """Old script names live on only in docs/gpu_tasks.md's mapping table; lab/ only in git history."""
    files = [
        ROOT / "README.md",
        ROOT / "Makefile",
        *(ROOT / "docs").glob("*.md"),
        *(ROOT / "scripts").glob("*"),
    ]
    files += [*(ROOT / "docker").rglob("*"), *(ROOT / "tests").rglob("*.py")]
    for f in files:
        if not f.is_file() or f.name in ("gpu_tasks.md", Path(__file__).name):
            continue
        text = f.read_text(errors="replace")
        for old in [*REMOVED, "scripts/gpu_*.sh"]:
            assert old not in text, f"{f.relative_to(ROOT)} mentions {old}"
        # a lab path only as a git object of the commit that still had it
        assert not re.search(r"(?<![\w:])lab/", text), f"{f.relative_to(ROOT)} mentions lab/"
    assert not (ROOT / "lab").exists()


def _dry_run_env(tmp_path: Path) -> dict[str, str]:
    skip_without_server()
    return {
        "DEVICE": "cpu",
        "VENV": str(venv_dir()),
        "BUILD": str(build_dir()),
        "NO_BUILD": "1",
        "OUT": str(tmp_path / "out"),
        "WORK": str(tmp_path / "work"),
        "PORT": str(free_port()),
    }


@pytest.mark.server
def test_serve_int8_dry_run_on_cpu(tmp_path):
    env = _dry_run_env(tmp_path) | {"CK_CONFIG": str(ROOT / "models/chatglm-tiny/config.json")}
    proc = _gpu_sh("serve-int8", env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # A response may carry several ids when the sender is behind (overlapped stepping
    # delivers the last two ids back to back): every id arrives, in at most 32 events.
    m = re.search(
        r"serve-int8: generate returned 32 ids; generate_stream (\d+) events, 32 ids; same ids: True",
        proc.stdout,
    )
    assert m and 1 <= int(m.group(1)) <= 32, proc.stdout
    out = tmp_path / "out" / "serve-int8"
    assert {"generate.json", "generate_stream.txt", "server_lines.txt", "metrics.txt"} <= {
        p.name for p in out.iterdir()
    }


@pytest.mark.server
def test_reload_dry_run_on_cpu(tmp_path):
    proc = _gpu_sh("reload", env=_dry_run_env(tmp_path) | {"CYCLES": "3"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "reload: 3 cycles, RSS" in proc.stdout
    rows = (tmp_path / "out" / "reload" / "reload.csv").read_text().splitlines()
    assert rows[0] == "cycle,rss_kb,threads,gpu_mib" and len(rows) == 5
