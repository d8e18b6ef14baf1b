"""Through Triton on the GPU: the whole repository with the decoder's GPU configuration
(`--model-config-name=gpu`: configs/gpu.pbtxt, a KIND_GPU instance running the CUDA engine
in fp16) serves the tiny checkpoint; its greedy text through the `chatglm` ensemble equals
the CPU engine's (`chatglm-generate --engine cpu`) on the same checkpoint.

Recorded on the GPU machine without Triton: the fp16 CUDA engine's greedy ids agree with the
CPU engine's for 40 of 40 ids on every tiny prompt (tests/gpu/test_cuda_engine.py), so the texts must be equal.
"""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
import requests
from helpers.reliability import skip_without_server
from helpers.tritonserver import DEFAULT_CHECKPOINT, TritonServer, parse_metrics, venv_dir

pytestmark = [pytest.mark.gpu, pytest.mark.server]

PROMPTS = ["你好", "What is the capital of China?", "写一首诗"]
N = 40


def gpu_present() -> str | None:
    """Why there is no usable NVIDIA GPU here, or None."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return "no NVIDIA GPU here (nvidia-smi is not installed)"
    r = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=60)
    if r.returncode != 0 or "GPU" not in r.stdout:
        return f"no NVIDIA GPU here (nvidia-smi -L: {(r.stdout + r.stderr).strip()[:200]})"
    return None


def cpu_engine_texts(prompts: list[str], max_tokens: int) -> list[str]:
    cmd = [str(venv_dir() / "bin" / "chatglm-generate"), "--checkpoint", str(DEFAULT_CHECKPOINT),
           "--engine", "cpu", "--max-tokens", str(max_tokens), "--json"]  # fmt: skip
    for p in prompts:
        cmd += ["--text", p]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=600)
    return json.loads(out.stdout)["text"]


def test_greedy_text_through_triton_on_the_gpu_equals_the_cpu_engine(tmp_path):
    why = gpu_present()
    if why:
        pytest.skip(why)
    skip_without_server()
    want = cpu_engine_texts(PROMPTS, N)
    srv = TritonServer(log_dir=tmp_path, model_config_name="gpu")
    try:
        srv.start()
    except (RuntimeError, TimeoutError) as e:
        if "no CUDA back-end" in srv.log():
            pytest.skip("this build has no CUDA back-end (make build on a machine with nvcc)")
        raise AssertionError(f"tritonserver did not start with the GPU configs: {e}") from None
    try:
        assert "device cuda" in srv.log(), srv.log_tail(40)  # the decoder's instance line
        for prompt, text in zip(PROMPTS, want, strict=True):
            r = requests.post(
                f"http://{srv.http_url}/v2/models/chatglm/generate",
                json={"text_input": prompt, "max_tokens": N},
                timeout=300,
                headers={"Connection": "close"},
            )
            assert r.status_code == 200, r.text
            assert r.json()["text_output"] == text, prompt
        devices = {
            labels.get("device"): value
            for name, labels, value in parse_metrics(srv.metrics_text())
            if name == "glm_generated_tokens_total"
        }
        assert devices and all(d.startswith("cuda") for d in devices), devices
        assert sum(devices.values()) > 0, devices
        assert srv.stop() == 0
    finally:
        srv.stop(check=False)
