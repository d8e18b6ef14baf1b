"""Runs the engine's C++ unit tests (backend_src/tests/*_test.cc, built by `make build`
into $BUILD/cmake) so that `make test` covers them."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from test_engine_util import REPO, build_dir

TESTS = sorted(p.stem for p in (REPO / "backend_src" / "tests").glob("*_test.cc"))


@pytest.mark.parametrize("name", TESTS)
def test_cpp_unit(name):
    exe = Path(build_dir()) / name
    if not exe.exists():
        pytest.skip(f"{exe} is not built (run: make build)")
    r = subprocess.run([str(exe)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"{name} failed:\n{r.stdout}\n{r.stderr}"
    assert "all passed" in r.stderr
