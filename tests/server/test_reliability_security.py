"""Security defaults: `make serve` listens on loopback only with model control off; prompts
have a byte limit; the converter never runs code from a checkpoint (pickles are loaded with
weights_only=True, safetensors preferred); no eval / exec / pickle of request data anywhere
on the serving path.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
from helpers.reliability import (
    generate_text,
    http_get,
    http_post,
    model_ready,
    record,
    skip_without_server,
)
from helpers.tritonserver import DEFAULT_CHECKPOINT, ROOT, free_port

PY = ROOT / ".venv" / "bin" / "python"
HUB = DEFAULT_CHECKPOINT / "hub"  # the tiny model in hub layout (glmserve.tiny writes it)


# ---------------------------------------------------------------------------- make serve


def _listening(port: int) -> list[str]:
    """Local addresses (hex, as in /proc/net/tcp*) listening on `port`."""
    out = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, state = fields[1], fields[3]
            addr, _, hexport = local.rpartition(":")
            if state == "0A" and int(hexport, 16) == port:  # 0A = LISTEN
                out.append(addr)
    return out


# 127.0.0.1 in /proc/net/tcp byte order; in /proc/net/tcp6 as IPv4-mapped ::ffff:127.0.0.1
# (gRPC listens that way) or ::1.
LOOPBACK = {"0100007F", "0000000000000000FFFF00000100007F", "00000000000000000000000001000000"}


@pytest.mark.server
def test_make_serve_listens_on_loopback_only_with_model_control_off(tmp_path):
    skip_without_server()
    ports = {"HTTP_PORT": free_port(), "GRPC_PORT": free_port(), "METRICS_PORT": free_port()}
    env = dict(os.environ, DEVICE="cpu", **{k: str(v) for k, v in ports.items()})
    env.pop("HOST", None)  # the default is what is under test
    log_path = tmp_path / "serve.log"
    with open(log_path, "wb") as log:
        p = subprocess.Popen(
            ["bash", str(ROOT / "scripts" / "serve.sh")],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=ROOT,
            start_new_session=True,
        )
        try:
            url = f"http://127.0.0.1:{ports['HTTP_PORT']}"
            deadline = time.monotonic() + 120
            while not _ready(url):
                assert p.poll() is None, log_path.read_text(errors="replace")
                assert time.monotonic() < deadline, "make serve did not become ready"
                time.sleep(0.3)
            listening = {name: _listening(port) for name, port in ports.items()}
            for name, addrs in listening.items():
                assert addrs, f"{name}: nothing listens on {ports[name]}"
                assert all(a in LOOPBACK for a in addrs), f"{name} binds {addrs}, not loopback"
            # Model control is off: the repository API can neither unload nor load.
            for action in ("unload", "load"):
                status, body = http_post(f"{url}/v2/repository/models/chatglm_decoder/{action}")
                assert status != 200, (action, body)
            status, _ = http_get(f"{url}/v2/models/chatglm_decoder/ready")
            assert status == 200  # still loaded after the refused unload
            record("serve_defaults", listening=listening, model_control="none")
        finally:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=60)
            finally:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
    text = log_path.read_text(errors="replace")
    assert "MODE_NONE" in text


def _ready(url: str) -> bool:
    try:
        return http_get(f"{url}/v2/health/ready", timeout=2)[0] == 200
    except OSError:  # not listening yet
        return False


# ---------------------------------------------------------------------------- request size


@pytest.mark.server
def test_prompt_byte_limit_and_huge_bodies(triton_server):
    """Prompts over max_prompt_bytes (65536) are refused by name; a body far beyond that
    (8 MiB over HTTP) is refused too, and the server keeps serving."""
    srv = triton_server
    text, err = generate_text(srv.grpc_url, "x" * 65_537, max_tokens=2)
    assert text == "" and err is not None and "65536" in err and "text_input" in err
    text, err = generate_text(srv.grpc_url, "你好 " * 9_000, max_tokens=2)  # 63000 bytes
    assert err is not None and "context" in err  # too many tokens, but not the byte limit
    status, body = http_post(
        f"http://{srv.http_url}/v2/models/chatglm/generate",
        {"text_input": "y" * (8 << 20), "max_tokens": 2},
    )
    assert status == 400 and "65536" in body, (status, body[:200])
    assert model_ready(srv, "chatglm")
    text, err = generate_text(srv.grpc_url, "你好", max_tokens=4)
    assert err is None and text


# ---------------------------------------------------------------------------- converter


class _Payload:
    """Unpickling this would create `marker` (a harmless stand-in for arbitrary code)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _malicious_bin(path: Path, marker: Path) -> None:
    import torch

    torch.save({"transformer.word_embeddings.weight": _Payload(marker)}, path)


def _convert(src: Path, out: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(PY), "-m", "glmserve.convert", "--src", str(src), "--out", str(out), "--quiet"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )


@pytest.fixture
def hub_config():
    if not (HUB / "config.json").exists():
        pytest.skip(f"{HUB} is missing (run: make demo-model)")
    return HUB


def test_converter_refuses_a_pickled_callable(tmp_path, hub_config):
    src = tmp_path / "evil"
    src.mkdir()
    (src / "config.json").write_bytes((hub_config / "config.json").read_bytes())
    marker = tmp_path / "PWNED"
    _malicious_bin(src / "pytorch_model.bin", marker)
    r = _convert(src, tmp_path / "out")
    assert r.returncode != 0, r.stdout + r.stderr
    assert "weights_only" in r.stderr, r.stderr
    assert not marker.exists(), "the converter executed code from a pickle"
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_converter_prefers_safetensors_over_a_bin(tmp_path, hub_config):
    src = tmp_path / "both"
    src.mkdir()
    for f in hub_config.iterdir():
        (src / f.name).write_bytes(f.read_bytes())
    assert (src / "model.safetensors").exists()
    marker = tmp_path / "PWNED"
    _malicious_bin(src / "pytorch_model.bin", marker)
    r = _convert(src, tmp_path / "out")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "out" / "model.safetensors").exists()
    assert not marker.exists(), "the converter opened the .bin although safetensors exist"


# ---------------------------------------------------------------------------- code audit

SERVING_PY = [
    *sorted((ROOT / "model_repository").glob("*/1/model.py")),
    ROOT / "glmserve" / "tokenizer.py",
]
PY_FORBIDDEN = re.compile(
    r"(?<![\w.])(eval|exec|compile)\(|\bpickle\b|\bmarshal\b|\bdill\b|yaml\.load\(|"
    r"\bos\.system\(|\bsubprocess\b|__import__\(|torch\.load\("
)
CPP_FORBIDDEN = re.compile(r"\bsystem\(|\bpopen\(|\bexec[lv]p?e?\(|\bdlopen\(")


def test_no_eval_or_pickle_on_the_serving_path():
    assert len(SERVING_PY) >= 3, SERVING_PY  # preprocessing, postprocessing, tokenizer
    hits = []
    for path in SERVING_PY:
        for n, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if PY_FORBIDDEN.search(code):
                hits.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    cpp = sorted((ROOT / "backend_src").rglob("*.cc")) + sorted((ROOT / "backend_src").rglob("*.h"))
    assert cpp
    for path in cpp:
        if "tests" in path.relative_to(ROOT).parts:
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("//", 1)[0]
            if CPP_FORBIDDEN.search(code):
                hits.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not hits, "\n".join(hits)


def test_the_audit_would_catch_a_violation():
    """The patterns above are not vacuous."""
    for bad in ("x = eval(s)", "pickle.loads(b)", "exec(code)", "yaml.load(f)", "torch.load(p)"):
        assert PY_FORBIDDEN.search(bad), bad
    for bad in ('system("rm")', 'popen(cmd, "r")', "execvp(a, b)"):
        assert CPP_FORBIDDEN.search(bad), bad
    assert not PY_FORBIDDEN.search("json.loads(raw)")
    assert not PY_FORBIDDEN.search('re.compile("a|b")')
    assert PY_FORBIDDEN.search("code = compile(src, 'f', 'exec')")


# ---------------------------------------------------------------------------- documentation


def test_readme_documents_safe_exposure():
    """README tells how to expose the server beyond loopback: behind a reverse proxy with
    authentication (and TLS), model control kept off, metrics not published."""
    text = (ROOT / "README.md").read_text().lower()
    for word in ("reverse proxy", "authentication", "tls", "model-control-mode", "metrics"):
        assert word in text, f"README.md does not mention {word!r}"
