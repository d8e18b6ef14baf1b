"""Runs the engine's C++ unit tests (backend_src/tests/*_test.cc: GoogleTest programs
that `make build` builds into $BUILD/cmake and registers with CTest) so that `make test`
covers them: one pytest test per program, through `ctest -L <program>`."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
from helpers.engine_util import REPO, build_dir

TESTS = sorted(p.stem for p in (REPO / "backend_src" / "tests").glob("*_test.cc"))


@pytest.mark.parametrize("name", TESTS)
def test_cpp_unit(name):
    if not (build_dir() / "CTestTestfile.cmake").exists():
        pytest.skip(f"{build_dir()} has no CTest tests (run: make build)")
    ctest = shutil.which("ctest")
    assert ctest, "ctest (CMake) is not on PATH"
    r = subprocess.run(
        [ctest, "--test-dir", str(build_dir()), "--output-on-failure", "-L", f"^{name}$"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = f"{name} failed:\n{r.stdout}\n{r.stderr}"
    assert r.returncode == 0, out
    m = re.search(r"100% tests passed, 0 tests failed out of (\d+)", r.stdout)
    assert m and int(m.group(1)) > 0, out
