"""scripts/serve.sh (`make serve`): loopback binding, ports, model control off,
and a checkpoint without a tokenizer serving chatglm_decoder alone."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time

import pytest
import requests
from helpers.tritonserver import DEFAULT_CHECKPOINT, ROOT, free_port, skip_without_server

pytestmark = pytest.mark.server


def start_serve(tmp_path, **env_extra):
    skip_without_server()
    ports = {"HTTP_PORT": free_port(), "GRPC_PORT": free_port(), "METRICS_PORT": free_port()}
    env = dict(os.environ, DEVICE="cpu", **{k: str(v) for k, v in ports.items()}, **env_extra)
    log = open(tmp_path / "serve.log", "wb")  # noqa: SIM115 - closed by stop()
    p = subprocess.Popen(
        ["bash", str(ROOT / "scripts" / "serve.sh")],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=ROOT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{ports['HTTP_PORT']}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert p.poll() is None, (tmp_path / "serve.log").read_text(errors="replace")
        try:
            if requests.get(f"{url}/v2/health/ready", timeout=2).status_code == 200:
                return p, log, url
        except requests.ConnectionError:
            pass
        time.sleep(0.3)
    os.killpg(p.pid, signal.SIGKILL)
    raise TimeoutError((tmp_path / "serve.log").read_text(errors="replace"))


def stop(p, log) -> int:
    p.send_signal(signal.SIGTERM)
    try:
        code = p.wait(timeout=60)
    finally:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        log.close()
    return code


def test_make_serve_defaults_to_the_demo_model_on_loopback(tmp_path):
    p, log, url = start_serve(tmp_path)
    try:
        r = requests.post(
            f"{url}/v2/models/chatglm/generate",
            json={"text_input": "你好", "max_tokens": 8},
            timeout=60,
            headers={"Connection": "close"},
        )
        assert r.status_code == 200, r.text
        assert r.json()["text_output"]
        # Model control is off: the repository API refuses to load or unload.
        r = requests.post(
            f"{url}/v2/repository/models/chatglm/unload",
            timeout=10,
            headers={"Connection": "close"},
        )
        assert r.status_code != 200
    finally:
        assert stop(p, log) == 0
    text = (tmp_path / "serve.log").read_text(errors="replace")
    assert f"checkpoint {DEFAULT_CHECKPOINT}, device cpu" in text
    assert "Started HTTPService at 127.0.0.1:" in text
    assert "Started GRPCInferenceService at 127.0.0.1:" in text


def test_checkpoint_without_tokenizer_serves_the_decoder_alone(tmp_path):
    ckpt = tmp_path / "ids-only"
    ckpt.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(DEFAULT_CHECKPOINT / name, ckpt / name)
    build = tmp_path / "build"
    real_build = ROOT / os.environ.get("BUILD", "build")
    (build / "backends").mkdir(parents=True)
    os.symlink(real_build / "backends" / "chatglm", build / "backends" / "chatglm")
    p, log, url = start_serve(tmp_path, MODEL=str(ckpt), BUILD=str(build))
    try:
        h = {"Connection": "close"}
        assert requests.get(f"{url}/v2/models/chatglm_decoder/ready", timeout=10, headers=h).ok
        assert not requests.get(f"{url}/v2/models/chatglm/ready", timeout=10, headers=h).ok
        r = requests.post(
            f"{url}/v2/models/chatglm_decoder/generate",
            json={"input_ids": [5, 6, 681, 684], "max_tokens": 4},
            timeout=60,
            headers=h,
        )
        assert r.status_code == 200, r.text
        assert len(r.json()["output_ids"]) == 4
    finally:
        assert stop(p, log) == 0
    text = (tmp_path / "serve.log").read_text(errors="replace")
    assert "no ice_text.model: serving chatglm_decoder only" in text
