"""``make serve`` (scripts/serve.sh) starts the OpenAI-compatible API beside tritonserver
on OPENAI_PORT, on loopback, with the API key of GLM_OPENAI_API_KEY, and stops it with
the server; OPENAI_PORT=0 leaves it off. Plus the command line's own checks."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import openai
import pytest
from helpers.openai_server import API_KEY
from helpers.tritonserver import ROOT, free_port
from test_triton_serve import start_serve, stop

pytestmark = pytest.mark.server


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except FileNotFoundError:
        return False
    return state != "Z"


def _wait(predicate, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise TimeoutError(what)


def test_make_serve_starts_and_stops_the_openai_api(tmp_path):
    port = free_port()
    p, log, _ = start_serve(tmp_path, OPENAI_PORT=str(port), GLM_OPENAI_API_KEY=API_KEY)
    text = ""
    try:
        client = openai.OpenAI(
            base_url=f"http://127.0.0.1:{port}/v1", api_key=API_KEY, max_retries=3
        )
        _wait(lambda: _ready(client), 120, "the OpenAI API did not answer")
        r = client.chat.completions.create(
            model="chatglm-tiny", messages=[{"role": "user", "content": "你好"}], max_tokens=4
        )
        assert r.usage.completion_tokens > 0
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(
                base_url=f"http://127.0.0.1:{port}/v1", api_key="wrong", max_retries=0
            ).models.list()
        text = (tmp_path / "serve.log").read_text(errors="replace")
        assert f"http://127.0.0.1:{port}/v1" in text and "API key required" in text
        pid = int(re.search(r"OpenAI-compatible API \S+ \(pid (\d+)", text).group(1))
        assert _alive(pid)
        assert _listening(port) == ["127.0.0.1"]  # loopback only, like tritonserver
    finally:
        code = stop(p, log)  # SIGTERM to tritonserver (serve.sh exec'd into it)
    assert code == 0
    _wait(lambda: not _alive(pid), 30, "the OpenAI API outlived tritonserver")


def _ready(client: openai.OpenAI) -> bool:
    try:
        return bool(client.models.list().data)
    except openai.APIConnectionError:
        return False


def _listening(port: int) -> list[str]:
    """Local addresses with a listening TCP socket on ``port`` (IPv4, /proc/net/tcp)."""
    found = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        addr, _, hexport = local.partition(":")
        if state == "0A" and int(hexport, 16) == port:
            found.append(".".join(str(int(addr[i : i + 2], 16)) for i in (6, 4, 2, 0)))
    return found


def test_openai_port_0_leaves_it_off(tmp_path):
    p, log, _ = start_serve(tmp_path, OPENAI_PORT="0")
    try:
        text = (tmp_path / "serve.log").read_text(errors="replace")
        assert "OpenAI-compatible API: off (OPENAI_PORT=0)" in text
    finally:
        assert stop(p, log) == 0


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "glmserve.openai_api", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def test_cli_help_and_bad_arguments(tmp_path, capsys):
    out = _cli("--help")
    assert out.returncode == 0 and "--api-key" in out.stdout and "GLM_OPENAI_API_KEY" in out.stdout
    assert "127.0.0.1" in out.stdout
    # The bad arguments in-process (the same main() the module runs; no server starts).
    from glmserve.openai_api.__main__ import main

    for args, message in (
        (["--checkpoint", "models/chatglm-tiny", "--workers", "0"], "--workers"),
        (["--checkpoint", "models/chatglm-tiny", "--port", "70000"], "--port"),
        (["--checkpoint", str(tmp_path)], "ice_text.model is missing"),
        ([], "--checkpoint"),
    ):
        try:
            code = main(args)
        except SystemExit as e:  # argparse's errors
            code = e.code
        err = capsys.readouterr().err
        assert code not in (0, None) and message in err, err


def test_parent_pid(tmp_path):
    """--parent-pid: the server stops once that process (its parent) is gone."""
    port = free_port()
    launcher = (
        "import os, subprocess, sys; p = subprocess.Popen([sys.executable, '-m', "
        "'glmserve.openai_api', '--checkpoint', 'models/chatglm-tiny', '--triton-url', "
        f"'127.0.0.1:{free_port()}', '--port', '{port}', '--parent-pid', str(os.getpid())], "
        "stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL); print(p.pid, flush=True)"
    )
    out = subprocess.run(
        [sys.executable, "-c", launcher], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    pid = int(out.stdout.split()[0])
    try:
        _wait(lambda: not _alive(pid), 60, "the server outlived its parent")
    finally:
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
