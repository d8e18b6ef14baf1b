"""glmserve.venv_check: what the GPU tasks require of the Triton venv."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from glmserve import venv_check as vc

ROOT = Path(__file__).resolve().parents[2]


def test_modules_are_unique_and_ordered():
    mods = vc.modules(["ensemble", "clients"])
    assert mods[:3] == ["numpy", "sentencepiece", "glmserve.tokenizer"]
    assert len(mods) == len(set(mods))


def test_missing_module_is_reported(monkeypatch):
    monkeypatch.setitem(vc.NEEDS, "server", ["glmserve.config_only", "glmserve_no_such_module"])
    bad = vc.problems(["server"])
    assert len(bad) == 1 and bad[0].startswith("glmserve_no_such_module: ModuleNotFoundError")


def test_numpy_2_is_refused_for_the_ensemble(monkeypatch):
    np = pytest.importorskip("numpy")
    monkeypatch.setattr(np, "__version__", "2.1.0")
    monkeypatch.setitem(vc.NEEDS, "ensemble", ["numpy"])
    assert vc.problems(["ensemble"]) == [
        "numpy 2.1.0: the Python-backend stub needs numpy < 2 (1.26.4)"
    ]
    assert vc.problems(["server"]) == []


def test_cli_exit_codes():
    def run(*need: str) -> subprocess.CompletedProcess:
        args = [a for n in need for a in ("--need", n)]
        return subprocess.run(
            [sys.executable, "-m", "glmserve.venv_check", *args],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )

    ok = run("server")
    assert ok.returncode == 0 and ok.stdout.startswith("venv check: python "), ok.stdout + ok.stderr
    bad = subprocess.run(
        [sys.executable, "-m", "glmserve.venv_check", "--need", "nonsense"],
        cwd=ROOT,
        capture_output=True,
    )
    assert bad.returncode == 2  # argparse: not a known need
