"""Start and stop the real `tritonserver` (nvidia-pytriton's 2.51.0) for tests.

    from tests.tritonserver import TritonServer

    with TritonServer(backend_config={"num_kv_blocks": 64, "max_queue": 4}) as srv:
        srv.http_url      # "127.0.0.1:PORT" (tritonclient.http / curl)
        srv.grpc_url      # "127.0.0.1:PORT" (tritonclient.grpc)
        srv.metrics_url   # "http://127.0.0.1:PORT/metrics"
        srv.log_path      # the server's combined stdout/stderr
        srv.metric("glm_kv_blocks_used")   # summed over label sets (filter with labels=)

Every knob is a constructor argument, nothing is edited in place:

* ``repo``: model repository (default: ``model_repository/`` of this checkout);
  ``models``: serve only these models (a copy of the repository under the log
  directory holds just them, e.g. ``["chatglm_decoder"]``).
* ``checkpoint_dir``: the checkpoint every model uses (GLM_CHECKPOINT_DIR;
  default ``models/chatglm-tiny``).
* ``backend_config``: chatglm_decoder parameters as start-time overrides
  (``--backend-config=chatglm,key=value``): num_kv_blocks, max_queue,
  max_running_seqs, kv_cache_bytes, device, dtype, int8, default_max_tokens, ...
* ``model_config_name``: ``"gpu"`` selects ``configs/gpu.pbtxt`` variants.
* ``extra_args``: more tritonserver arguments; ``env``: more environment.

Ports are free ports picked at start; the server binds 127.0.0.1 only.
``stop()`` sends SIGTERM, waits, and returns the exit code (SIGKILL after the
timeout, then raises).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_REPO = ROOT / "model_repository"
DEFAULT_CHECKPOINT = ROOT / "models" / "chatglm-tiny"


def _abs(p: str | os.PathLike) -> Path:
    p = Path(p)
    return p if p.is_absolute() else ROOT / p


def venv_dir() -> Path:
    return _abs(os.environ.get("VENV", ".venv"))


def build_dir() -> Path:
    return _abs(os.environ.get("BUILD", "build"))


def venv_site_packages(venv: Path) -> Path:
    py = venv / "bin" / "python"
    if py.resolve() == Path(sys.executable).resolve():
        return Path(sysconfig.get_paths()["purelib"])
    out = subprocess.run(
        [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    )
    return Path(out.stdout.strip())


def backend_library(build: Path | None = None) -> Path:
    return (build or build_dir()) / "backends" / "chatglm" / "libtriton_chatglm.so"


def prepare_backend_dir(build: Path, venv: Path) -> tuple[Path, Path, Path]:
    """Lays out build/backends/python (pytriton's Python backend + stub).

    Returns (tritonserver binary, backend directory, nvidia_pytriton.libs)."""
    site = venv_site_packages(venv)
    home = site / "pytriton" / "tritonserver"
    binary = home / "bin" / "tritonserver"
    if not binary.exists():
        raise FileNotFoundError(f"no tritonserver at {binary} (nvidia-pytriton not in {venv}?)")
    out = build / "backends"
    (out / "python").mkdir(parents=True, exist_ok=True)
    pyver = f"{sys.version_info[0]}.{sys.version_info[1]}"
    stub = home / "python_backend_stubs" / pyver / "triton_python_backend_stub"
    for src in (
        home / "backends" / "python" / "libtriton_python.so",
        home / "backends" / "python" / "triton_python_backend_utils.py",
        stub,
    ):
        dst = out / "python" / src.name
        if not dst.exists() or dst.stat().st_size != src.stat().st_size:
            tmp = dst.with_suffix(dst.suffix + f".tmp{os.getpid()}")
            shutil.copy2(src, tmp)
            os.replace(tmp, dst)
    return binary, out, site / "nvidia_pytriton.libs"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_METRIC_RE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")
_LABEL_RE = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text: str) -> list[tuple[str, dict[str, str], float]]:
    """Prometheus text format -> [(name, labels, value)]."""
    out = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _METRIC_RE.match(line)
        if not m:
            continue
        labels = dict(_LABEL_RE.findall(m.group(2) or ""))
        try:
            value = float(m.group(3))
        except ValueError:
            continue
        out.append((m.group(1), labels, value))
    return out


class TritonServer:
    def __init__(
        self,
        repo: str | os.PathLike | None = None,
        *,
        models: list[str] | None = None,
        checkpoint_dir: str | os.PathLike | None = None,
        backend_config: dict[str, object] | None = None,
        model_config_name: str | None = None,
        extra_args: list[str] | tuple[str, ...] = (),
        env: dict[str, str] | None = None,
        log_dir: str | os.PathLike | None = None,
        startup_timeout: float = 180.0,
        build: str | os.PathLike | None = None,
        venv: str | os.PathLike | None = None,
    ) -> None:
        self.repo = _abs(repo) if repo is not None else DEFAULT_REPO
        self.models = models
        self.checkpoint_dir = _abs(checkpoint_dir) if checkpoint_dir else DEFAULT_CHECKPOINT
        self.backend_config = dict(backend_config or {})
        self.model_config_name = model_config_name
        self.extra_args = list(extra_args)
        self.env = dict(env or {})
        self.startup_timeout = startup_timeout
        self.build = _abs(build) if build else build_dir()
        self.venv = _abs(venv) if venv else venv_dir()
        self._log_dir = Path(log_dir) if log_dir else None
        self.process: subprocess.Popen | None = None
        self.returncode: int | None = None
        self.http_port = self.grpc_port = self.metrics_port = 0
        self.log_path: Path | None = None
        self._log_file = None

    # -- addresses -----------------------------------------------------------
    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    # -- life cycle ----------------------------------------------------------
    def command(self, binary: Path, backend_dir: Path, repo: Path) -> list[str]:
        cmd = [
            str(binary),
            f"--model-repository={repo}",
            f"--backend-directory={backend_dir}",
            "--http-address=127.0.0.1",
            "--grpc-address=127.0.0.1",
            f"--http-port={self.http_port}",
            f"--grpc-port={self.grpc_port}",
            f"--metrics-port={self.metrics_port}",
            "--allow-metrics=true",
            "--metrics-interval-ms=200",
            "--exit-timeout-secs=20",
            "--log-info=true",
        ]
        if self.model_config_name:
            cmd.append(f"--model-config-name={self.model_config_name}")
        for key, value in self.backend_config.items():
            if isinstance(value, bool):
                value = "true" if value else "false"
            cmd.append(f"--backend-config=chatglm,{key}={value}")
        return cmd + self.extra_args

    def _repo_for_models(self, log_dir: Path) -> Path:
        if not self.models:
            return self.repo
        sub = log_dir / "model_repository"
        if sub.exists():
            shutil.rmtree(sub)
        sub.mkdir(parents=True)
        for name in self.models:
            shutil.copytree(self.repo / name, sub / name)
        return sub

    def start(self) -> TritonServer:
        if self.process is not None:
            raise RuntimeError("server already started")
        lib = backend_library(self.build)
        if not lib.exists():
            raise FileNotFoundError(f"{lib} is missing (run: make build)")
        binary, backend_dir, libs = prepare_backend_dir(self.build, self.venv)
        log_dir = self._log_dir or Path(tempfile.mkdtemp(prefix="tritonserver-"))
        log_dir.mkdir(parents=True, exist_ok=True)
        repo = self._repo_for_models(log_dir)
        self.http_port, self.grpc_port, self.metrics_port = free_port(), free_port(), free_port()
        while len({self.http_port, self.grpc_port, self.metrics_port}) < 3:
            self.grpc_port, self.metrics_port = free_port(), free_port()
        env = dict(os.environ)
        env["PATH"] = f"{self.venv / 'bin'}:{env.get('PATH', '')}"
        env["LD_LIBRARY_PATH"] = f"{libs}:{env.get('LD_LIBRARY_PATH', '')}".rstrip(":")
        env["GLM_CHECKPOINT_DIR"] = str(self.checkpoint_dir)
        env.pop("PYTHONPATH", None)
        env.update(self.env)
        self.log_path = log_dir / f"tritonserver-{self.http_port}.log"
        self._log_file = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            self.command(binary, backend_dir, repo),
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=str(ROOT),
            start_new_session=True,
        )
        try:
            self._wait_ready()
        except BaseException:
            self.stop(check=False)
            raise
        return self

    def _wait_ready(self) -> None:
        """Until /v2/health/ready answers 200 and then the metrics port answers too: Triton
        opens the metrics service a few milliseconds after HTTP, and a test that reads a
        metric first thing would otherwise race it (seen once in CI: connection refused)."""
        deadline = time.monotonic() + self.startup_timeout
        for url in (f"http://{self.http_url}/v2/health/ready", self.metrics_url):
            if self._wait_url(url, deadline):
                continue
            raise TimeoutError(
                f"tritonserver: {url} not answering after {self.startup_timeout}s; "
                f"log {self.log_path}:\n{self.log_tail()}"
            )

    def _wait_url(self, url: str, deadline: float) -> bool:
        """True once GET url answers 200 before `deadline`; raises if the server exits."""
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"tritonserver exited with {self.process.returncode} during start-up; "
                    f"log {self.log_path}:\n{self.log_tail()}"
                )
            try:
                req = urllib.request.Request(url, headers={"Connection": "close"})
                with urllib.request.urlopen(req, timeout=2) as r:
                    if r.status == 200:
                        return True
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            time.sleep(0.05)
        return False

    def stop(self, timeout: float = 60.0, check: bool = True) -> int | None:
        """SIGTERM, wait; returns the exit code. SIGKILL (and an error) after `timeout`."""
        p = self.process
        if p is None:
            return self.returncode
        killed = False
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                killed = True
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(timeout=30)
        # The Python backend stubs are in the server's session: none may linger.
        try:
            os.killpg(p.pid, 0)
            time.sleep(1.0)
            os.killpg(p.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.returncode = p.returncode
        self.process = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        if killed and check:
            raise TimeoutError(f"tritonserver did not stop in {timeout}s (killed)")
        return self.returncode

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop(check=False)

    # -- observation -----------------------------------------------------------
    def log(self) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")

    def log_tail(self, lines: int = 80) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def metrics_text(self) -> str:
        req = urllib.request.Request(self.metrics_url, headers={"Connection": "close"})
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.read().decode()

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        """Sum of the series called `name` whose labels include `labels`."""
        total = 0.0
        found = False
        for n, lab, value in parse_metrics(self.metrics_text()):
            if n == name and all(lab.get(k) == v for k, v in (labels or {}).items()):
                total += value
                found = True
        if not found:
            raise KeyError(f"metric {name} {labels or ''} not exported")
        return total

    def model_ready(self, model: str) -> bool:
        """GET /v2/models/<model>/ready answers 200."""
        req = urllib.request.Request(
            f"http://{self.http_url}/v2/models/{model}/ready", headers={"Connection": "close"}
        )
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status == 200
        except urllib.error.HTTPError:
            return False

    def wait_until(self, predicate, timeout: float = 30.0, what: str = "condition") -> None:
        """Polls predicate() until it holds (bounded wait; raises TimeoutError)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            time.sleep(0.1)
        raise TimeoutError(f"{what}: not reached within {timeout}s")

    def wait_metric(
        self, name: str, predicate, timeout: float = 30.0, labels=None, interval: float = 0.1
    ) -> float:
        """Polls metric `name` every `interval` s until predicate(value) holds; returns it."""
        deadline = time.monotonic() + timeout
        value = None
        while time.monotonic() < deadline:
            try:
                value = self.metric(name, labels)
                if predicate(value):
                    return value
            except KeyError:
                pass
            time.sleep(interval)
        raise TimeoutError(f"metric {name} stayed at {value} for {timeout}s")


def server_prerequisites() -> str | None:
    """Why a server cannot start here, or None."""
    lib = backend_library()
    if not lib.exists():
        return f"{lib} is missing (run: make build)"
    if not (DEFAULT_CHECKPOINT / "model.safetensors").exists():
        return f"{DEFAULT_CHECKPOINT} is missing (run: make demo-model)"
    if not (DEFAULT_CHECKPOINT / "ice_text.model").exists():
        return f"{DEFAULT_CHECKPOINT}/ice_text.model is missing (run: make demo-model)"
    return None


def skip_without_server() -> None:
    """Skips the calling test, saying why, when no tritonserver can start here."""
    import pytest

    why = server_prerequisites()
    if why:
        pytest.skip(f"cannot start tritonserver: {why}")
