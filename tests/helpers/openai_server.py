"""Start and stop the OpenAI-compatible server (``python -m glmserve.openai_api``) for tests.

    from helpers.openai_server import OpenAIServer

    with OpenAIServer(triton.http_url, api_key="sk-test") as oai:
        oai.base_url    # "http://127.0.0.1:PORT/v1" (openai.OpenAI(base_url=...))
        oai.url         # "http://127.0.0.1:PORT"
        oai.log()       # its combined stdout/stderr

A real subprocess (uvicorn) on a free port of 127.0.0.1; ``start()`` waits until it
answers ``/health`` (with ``wait_healthy=False``: until it answers at all, for tests
whose upstream is down on purpose). ``stop()`` sends SIGTERM and waits.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from helpers.tritonserver import DEFAULT_CHECKPOINT, ROOT, free_port

API_KEY = "sk-glmserve-test"


class OpenAIServer:
    def __init__(
        self,
        triton_url: str,
        *,
        api_key: str | None = API_KEY,
        checkpoint: str | os.PathLike | None = None,
        extra_args: list[str] | tuple[str, ...] = (),
        log_dir: str | os.PathLike | None = None,
        wait_healthy: bool = True,
        startup_timeout: float = 120.0,
    ) -> None:
        self.triton_url = triton_url
        self.api_key = api_key
        self.checkpoint = Path(checkpoint) if checkpoint else DEFAULT_CHECKPOINT
        self.extra_args = list(extra_args)
        self.log_dir = Path(log_dir) if log_dir else Path(tempfile.mkdtemp(prefix="openai-"))
        self.wait_healthy = wait_healthy
        self.startup_timeout = startup_timeout
        self.port = 0
        self.process: subprocess.Popen | None = None
        self.log_path: Path | None = None
        self._log_file = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "glmserve.openai_api",
            "--checkpoint",
            str(self.checkpoint),
            "--triton-url",
            self.triton_url,
            "--port",
            str(self.port),
            *self.extra_args,
        ]

    def start(self) -> OpenAIServer:
        if self.process is not None:
            raise RuntimeError("already started")
        self.port = free_port()
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.log_dir / f"openai-{self.port}.log"
        self._log_file = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        env = dict(os.environ)
        env.pop("GLM_OPENAI_API_KEY", None)
        if self.api_key:
            env["GLM_OPENAI_API_KEY"] = self.api_key
        self.process = subprocess.Popen(
            self.command(),
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=str(ROOT),
            start_new_session=True,
        )
        try:
            self._wait()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"the OpenAI server exited with {self.process.returncode}:\n{self.log()}"
                )
            status = self.health_status()
            if status == 200 or (status is not None and not self.wait_healthy):
                return
            time.sleep(0.1)
        raise TimeoutError(f"the OpenAI server did not get ready:\n{self.log()}")

    def health_status(self) -> int | None:
        """The status of GET /health, None when nothing answers."""
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=5) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code
        except (urllib.error.URLError, ConnectionError, OSError):
            return None

    def stop(self, timeout: float = 30.0) -> int | None:
        p = self.process
        if p is None:
            return None
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=10)
        self.process = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        return p.returncode

    def log(self) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")

    def __enter__(self) -> OpenAIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def raw_request(
    url: str,
    path: str,
    body: bytes,
    api_key: str | None = API_KEY,
    chunked: bool = False,
    declared_length: int | None = None,
) -> socket.socket:
    """Send one POST on a plain socket and return the socket (unread): closing it is a
    client disconnect. ``chunked``: no Content-Length, the body in one chunk;
    ``declared_length``: announce that Content-Length and send no body."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    s = socket.create_connection((host, int(port)), timeout=60)
    head = [f"POST {path} HTTP/1.1", f"Host: {host}", "Content-Type: application/json"]
    if api_key:
        head.append(f"Authorization: Bearer {api_key}")
    if chunked:
        head.append("Transfer-Encoding: chunked")
        payload = f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n"
    elif declared_length is not None:
        head.append(f"Content-Length: {declared_length}")
        payload = b""
    else:
        head.append(f"Content-Length: {len(body)}")
        payload = body
    s.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + payload)
    return s


def read_until(s: socket.socket, marker: bytes, limit: int = 1 << 20) -> bytes:
    """Read from ``s`` until ``marker`` arrived (or the peer closed, or ``limit`` bytes)."""
    data = b""
    while marker not in data and len(data) < limit:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    return data
