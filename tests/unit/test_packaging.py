"""What `pip install .` puts into site-packages: glmserve and the client as
`glmserve_client` (never a top-level `client`), with the console scripts."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[2]


def test_every_glmserve_package_is_listed() -> None:
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())
    listed = set(cfg["tool"]["setuptools"]["packages"])
    found = {
        ".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "glmserve").rglob("__init__.py")
    }
    assert found <= listed, f"add to pyproject.toml [tool.setuptools] packages: {found - listed}"
    assert "client" not in listed and "glmserve_client" in listed


@pytest.mark.slow
def test_wheel_installs_the_client_as_glmserve_client(tmp_path) -> None:
    """Builds the wheel and looks inside: glmserve_client/ holds client/'s modules and the
    chatglm-client script points at it; no top-level client/ package."""
    r = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path), str(ROOT)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    if r.returncode != 0 and "No module named" in r.stderr:
        pytest.skip(f"cannot build a wheel here: {r.stderr.strip().splitlines()[-1]}")
    assert r.returncode == 0, r.stderr
    (wheel,) = tmp_path.glob("glmserve-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "glmserve_client/cli.py" in names and "glmserve_client/api.py" in names
    assert not any(n.startswith("client/") for n in names)
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry).decode()
    assert "chatglm-client = glmserve_client.cli:main" in text
