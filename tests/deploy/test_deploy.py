"""Deployment: the Docker image's step scripts and the Kubernetes manifests.

Docker does not run on the CI machine, so the image is tested through its parts:
every RUN of docker/Dockerfile is a script, and these tests run each of them here
in a mode that means something on this machine (dry runs that resolve the real
package names and versions for the image, the real build on this checkout, the
entry point's installation check). The Kubernetes manifests are validated
strictly against the Kubernetes schemas, offline, and checked against the
contract the server keeps (health endpoints, ports, the backend's metric).
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
K8S = DOCKER / "k8s"
VENV = Path(os.environ.get("VENV", ROOT / ".venv"))
if not VENV.is_absolute():
    VENV = ROOT / VENV
BUILD = Path(os.environ.get("BUILD", ROOT / "build"))
if not BUILD.is_absolute():
    BUILD = ROOT / BUILD
BASE_IMAGE = "nvcr.io/nvidia/tritonserver:24.10-py3"


def run(args, env=None, timeout=300, cwd=ROOT):
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run(
        args,
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def out(proc):
    return f"rc={proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"


# ----------------------------------------------------------------- Dockerfile


def dockerfile_instructions(path: Path):
    """(instruction, argument) pairs, continuation lines joined, comments dropped."""
    result, cur = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not cur and (not line or line.startswith("#")):
            continue
        if cur and line.startswith("#"):
            continue
        if line.endswith("\\"):
            cur += line[:-1] + " "
            continue
        cur += line
        word, _, rest = cur.partition(" ")
        result.append((word.upper(), rest.strip()))
        cur = ""
    assert not cur, "Dockerfile ends inside a continued line"
    return result


def dockerignore_patterns():
    lines = (DOCKER / "Dockerfile.dockerignore").read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]


def ignored(rel: str, patterns) -> bool:
    parts = rel.split("/")
    for pat in patterns:
        bare = pat[3:] if pat.startswith("**/") else pat
        for i in range(len(parts)):
            prefix = "/".join(parts[: i + 1])
            if fnmatch.fnmatchcase(prefix, pat) or (
                pat.startswith("**/") and fnmatch.fnmatchcase(parts[i], bare)
            ):
                return True
    return False


def test_dockerfile_is_based_on_the_tested_triton_image():
    instr = dockerfile_instructions(DOCKER / "Dockerfile")
    args = {}
    for word, rest in instr:
        if word == "ARG" and "=" in rest:
            k, _, v = rest.partition("=")
            args[k] = v
    froms = [rest for word, rest in instr if word == "FROM"]
    assert len(froms) == 1, froms
    image = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), ""), froms[0]).split()[0]
    assert image == BASE_IMAGE
    # the same server as nvidia-pytriton 0.7.0 (tritonserver 2.51.0 = NGC 24.10)
    reqs = (ROOT / "requirements.txt").read_text()
    assert re.search(r"^nvidia-pytriton==0\.7\.0$", reqs, re.M), (
        "pytriton pin changed: recheck the image tag"
    )


def test_dockerfile_copies_and_runs_only_existing_paths():
    """Every COPY source exists and survives the ignore file; every script a RUN or
    the ENTRYPOINT names exists and was copied into the image before it runs."""
    instr = dockerfile_instructions(DOCKER / "Dockerfile")
    patterns = dockerignore_patterns()
    copied: list[str] = []  # context-relative paths (dirs end with /)
    workdir = "/"
    runs = 0
    for word, rest in instr:
        if word == "WORKDIR":
            workdir = rest
        elif word == "COPY":
            tokens = [t for t in shlex.split(rest) if not t.startswith("--")]
            *srcs, dest = tokens
            assert srcs, rest
            for src in srcs:
                path = ROOT / src
                assert path.exists(), f"COPY {src}: no such path in the repository"
                rel = src.rstrip("/")
                assert not ignored(rel, patterns), (
                    f"COPY {src} is excluded by Dockerfile.dockerignore"
                )
                if path.is_dir():
                    copied.append(rel + "/")
                    tracked = run(["git", "ls-files", rel]).stdout.split()
                    assert tracked, f"COPY {src}: nothing tracked in git there"
                else:
                    copied.append(rel)
        elif word in ("RUN", "ENTRYPOINT", "CMD"):
            text = " ".join(json.loads(rest)) if rest.startswith("[") else rest
            for script in re.findall(r"(?:/opt/glmserve/)?((?:docker|scripts)/[\w./-]+\.sh)", text):
                assert (ROOT / script).is_file(), f"{word} {script}: no such script"
                assert any(script == c or script.startswith(c) for c in copied if c), (
                    f"{word} uses {script} before a COPY brings it into the image"
                )
                mode = (ROOT / script).stat().st_mode
                if word == "ENTRYPOINT":
                    assert mode & 0o111, (
                        f"{script} must be executable (ENTRYPOINT runs it directly)"
                    )
            runs += word == "RUN"
    assert workdir == "/opt/glmserve"
    assert runs >= 4
    # the image is built with the Makefile's own scripts
    text = (DOCKER / "Dockerfile").read_text()
    for needed in ("scripts/setup.sh", "docker/build_backend.sh", "model_repository/"):
        assert needed in text, needed
    assert "scripts/build.sh" in (DOCKER / "build_backend.sh").read_text()


def test_dockerignore_keeps_host_build_products_out():
    patterns = dockerignore_patterns()
    for rel in (
        ".venv",
        "build/backends/chatglm",
        "models/chatglm-6b",
        "glmserve/_engine.cpython-310.so",
    ):
        assert ignored(rel, patterns), rel
    for rel in ("backend_src/CMakeLists.txt", "glmserve/tokenizer.py", "model_repository/chatglm"):
        assert not ignored(rel, patterns), rel


def test_make_docker_uses_this_dockerfile():
    makefile = (ROOT / "Makefile").read_text()
    m = re.search(r"^docker:.*\n((?:\t.*\n)+)", makefile, re.M)
    assert m, "no docker target in the Makefile"
    assert "-f docker/Dockerfile" in m.group(1)
    assert m.group(1).rstrip().endswith(" ."), "the build context must be the repository root"


# ------------------------------------------------------- Docker step scripts


def test_install_build_deps_dry_run_on_this_machine():
    proc = run(["bash", "docker/install_build_deps.sh", "--dry-run"])
    assert proc.returncode == 0, out(proc)
    need = re.search(
        r"cmake_minimum_required\(VERSION ([\d.]+)",
        (ROOT / "backend_src/CMakeLists.txt").read_text(),
    )
    assert need and f"need >= {need.group(1)}" in proc.stdout, out(proc)
    assert "dry run: nothing installed" in proc.stdout


def test_install_build_deps_plans_the_image_cuda_packages(tmp_path):
    """In the image nvcc and the cuBLAS headers are missing; the script must ask
    for the packages of the image's CUDA version (read from version.json)."""
    cuda = tmp_path / "cuda"
    cuda.mkdir()
    (cuda / "version.json").write_text(
        json.dumps(
            {
                "cuda": {"name": "CUDA SDK", "version": "12.6.2"},
                "libcublas": {"version": "12.6.3.3"},
            },
            indent=3,
        )
    )
    env = {"CUDA_HOME": str(cuda)}
    env.pop("CUDA_VERSION", None)
    proc = run(
        ["bash", "docker/install_build_deps.sh", "--dry-run"], env={**env, "CUDA_VERSION": ""}
    )
    assert proc.returncode == 0, out(proc)
    m = re.search(r"missing packages: (.*)", proc.stdout)
    assert m, out(proc)
    assert m.group(1).split() == [
        "cuda-nvcc-12-6",
        "cuda-cudart-dev-12-6",
        "cuda-cccl-12-6",
        "libcublas-dev-12-6",
    ]
    # nothing to go on: a clear failure, not a guess
    (cuda / "version.json").unlink()
    proc = run(
        ["bash", "docker/install_build_deps.sh", "--dry-run"], env={**env, "CUDA_VERSION": ""}
    )
    assert proc.returncode != 0 and "CUDA_VERSION" in proc.stdout + proc.stderr, out(proc)
    # a CPU-only image needs no CUDA at all
    proc = run(
        ["bash", "docker/install_build_deps.sh", "--dry-run"],
        env={**env, "CUDA_VERSION": "", "SKIP_CUDA": "1"},
    )
    assert proc.returncode == 0 and "cuda-" not in proc.stdout, out(proc)


def test_install_build_deps_dry_run_simulates_missing_tools_with_apt(tmp_path):
    """Without g++ and make on PATH the plan asks apt for them, and the dry run has
    apt-get simulate the install (so a wrong package name fails here)."""
    if not shutil.which("apt-get"):
        pytest.skip("no apt-get on this machine")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for d in ("/usr/local/bin", "/usr/bin", "/bin"):
        for entry in Path(d).iterdir():
            if entry.name in ("g++", "make") or (bindir / entry.name).exists():
                continue
            (bindir / entry.name).symlink_to(entry)
    env = {"PATH": str(bindir), "SKIP_CUDA": "1"}
    proc = run(["bash", "docker/install_build_deps.sh", "--dry-run"], env=env)
    assert proc.returncode == 0, out(proc)
    m = re.search(r"apt packages to install: (.*)", proc.stdout)
    assert m and m.group(1).split() == ["g++", "make"], out(proc)
    assert "apt-get simulation of g++ make: ok" in proc.stdout, out(proc)


@pytest.mark.slow
def test_install_python_env_resolves_requirements_for_the_image_python():
    """requirements.txt must install on the image's Python 3.10 / glibc 2.35 with
    wheels only and keep numpy < 2 (resolved against the package index, not installed)."""
    proc = run(["bash", "docker/install_python_env.sh", "--dry-run"], timeout=400)
    assert proc.returncode == 0, out(proc)
    assert re.search(r"\d+ packages resolve \(numpy 1\.", proc.stdout), out(proc)


@pytest.mark.slow
def test_install_python_env_dry_run_fails_on_numpy_2(tmp_path):
    reqs = tmp_path / "requirements.txt"
    reqs.write_text("numpy==2.2.6\n")
    proc = run(
        ["bash", "docker/install_python_env.sh", "--dry-run"], env={"REQS": str(reqs)}, timeout=300
    )
    assert proc.returncode != 0, out(proc)
    assert "numpy < 2" in proc.stderr + proc.stdout, out(proc)


def build_tree_ready() -> bool:
    return (BUILD / "cmake" / "CMakeCache.txt").is_file() and (VENV / "bin" / "python").is_file()


@pytest.mark.skipif(
    not build_tree_ready(),
    reason="needs the build tree of `make build` (make test builds it first)",
)
def test_build_backend_step_builds_and_checks_the_backend():
    """docker/build_backend.sh on this checkout's build tree (incremental, so
    quick): scripts/build.sh, then the checks the image build relies on. Where
    this machine builds the CUDA back-end, it runs as in the image (REQUIRE_CUDA=1)."""
    cmake_dir = BUILD / "cmake"
    with_cuda = any(cmake_dir.rglob("libglm_engine_cuda.*"))
    env = {"VENV": str(VENV), "BUILD": str(BUILD), "REQUIRE_CUDA": "1" if with_cuda else "0"}
    try:
        proc = run(["bash", "docker/build_backend.sh"], env=env, timeout=1200)
    finally:
        if with_cuda:  # leave the cache as `make build` had it
            run(
                ["cmake", "-S", "backend_src", "-B", str(cmake_dir), "-DGLM_WITH_CUDA=AUTO"],
                timeout=300,
            )
    assert proc.returncode == 0, out(proc)
    assert "build_backend: ok" in proc.stdout, out(proc)
    assert ("CUDA back-end built" in proc.stdout) == with_cuda


def test_build_backend_step_fails_without_the_venv(tmp_path):
    proc = run(
        ["bash", "docker/build_backend.sh"],
        env={"VENV": str(tmp_path / "none"), "BUILD": str(tmp_path)},
    )
    assert proc.returncode != 0 and "run scripts/setup.sh first" in proc.stderr, out(proc)


@pytest.mark.skipif(
    not build_tree_ready(),
    reason="needs the build tree of `make build` (make test builds it first)",
)
def test_entrypoint_check_passes_on_this_checkout():
    env = {
        "VENV": str(VENV),
        "BUILD": str(BUILD),
        "MODEL_DIR": "",
        "TRITONSERVER": "",
        "TRITON_PYTHON_BACKEND": "",
    }
    proc = run(["bash", "docker/entrypoint.sh", "check"], env=env, timeout=120)
    assert proc.returncode == 0, out(proc)
    assert "check: ok" in proc.stderr


def test_entrypoint_check_catches_a_missing_backend(tmp_path):
    env = {
        "VENV": str(VENV),
        "BUILD": str(tmp_path),
        "MODEL_DIR": "",
        "TRITONSERVER": "",
        "TRITON_PYTHON_BACKEND": "",
    }
    proc = run(["bash", "docker/entrypoint.sh", "check"], env=env, timeout=120)
    assert proc.returncode != 0 and "libtriton_chatglm.so" in proc.stderr, out(proc)


def test_entrypoint_refuses_an_empty_model_volume(tmp_path):
    env = {"VENV": str(VENV), "MODEL_DIR": str(tmp_path / "chatglm-6b"), "PREPARE_MODEL": "0"}
    proc = run(["bash", "docker/entrypoint.sh", "serve"], env=env, timeout=60)
    assert proc.returncode == 1, out(proc)
    assert "no checkpoint in MODEL_DIR" in proc.stderr and "prepare" in proc.stderr


def test_entrypoint_runs_other_commands():
    proc = run(["bash", "docker/entrypoint.sh", "sh", "-c", "echo hello-$HOST"], env={"HOST": ""})
    assert proc.returncode == 0 and proc.stdout.strip() == "hello-0.0.0.0", out(proc)


# ----------------------------------------------------------------- Kubernetes


def k8s_objects():
    objs = {}
    for path in sorted(K8S.glob("*.y*ml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                objs[(doc["kind"], doc["metadata"]["name"])] = doc
    return objs


@pytest.mark.slow
def test_k8s_manifests_validate_strictly_offline():
    proc = run(
        ["bash", "docker/validate_k8s.sh"],
        env={"VENV": str(VENV), "BUILD": str(BUILD)},
        timeout=600,
    )
    assert proc.returncode == 0, out(proc)
    for path in K8S.glob("*.y*ml"):
        assert f"ok   docker/k8s/{path.name}" in proc.stdout, out(proc)
    assert "0 failed" in proc.stdout


@pytest.mark.slow
def test_k8s_validator_rejects_a_broken_manifest(tmp_path):
    bad = tmp_path / "deployment.yaml"
    text = (K8S / "deployment.yaml").read_text()
    assert "failureThreshold:" in text
    bad.write_text(text.replace("failureThreshold:", "failureThreshld:", 1))
    unknown = tmp_path / "servicemonitor.yaml"
    unknown.write_text(
        "apiVersion: monitoring.coreos.com/v1\nkind: ServiceMonitor\nmetadata: {name: x}\nspec: {}\n"
    )
    env = {"VENV": str(VENV), "BUILD": str(BUILD)}
    proc = run(["bash", "docker/validate_k8s.sh", str(bad), str(unknown)], env=env, timeout=600)
    assert proc.returncode == 1, out(proc)
    assert "failureThreshld" in proc.stdout and "ServiceMonitor" in proc.stdout, out(proc)


def test_k8s_deployment_contract():
    objs = k8s_objects()
    dep = objs[("Deployment", "chatglm")]
    pod = dep["spec"]["template"]
    ann = pod["metadata"]["annotations"]
    assert ann["prometheus.io/scrape"] == "true"
    assert ann["prometheus.io/port"] == "8002" and ann["prometheus.io/path"] == "/metrics"
    (ctr,) = pod["spec"]["containers"]
    assert str(ctr["resources"]["limits"]["nvidia.com/gpu"]) == "1"  # one pod per GPU
    ports = {p["name"]: p["containerPort"] for p in ctr["ports"]}
    assert ports == {"http": 8000, "grpc": 8001, "metrics": 8002, "openai": 9000}
    assert ctr["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert ctr["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert ctr["startupProbe"]["httpGet"]["path"] == "/v2/health/live"
    # the selector matches the pod, and the Service selects the same pods
    sel = dep["spec"]["selector"]["matchLabels"]
    assert sel.items() <= pod["metadata"]["labels"].items()
    svc = objs[("Service", "chatglm")]
    assert svc["spec"]["selector"] == sel
    svc_ports = {p["name"]: (p["port"], p["targetPort"]) for p in svc["spec"]["ports"]}
    assert svc_ports == {
        "http": (8000, "http"),
        "grpc": (8001, "grpc"),
        "metrics": (8002, "metrics"),
        "openai": (9000, "openai"),
    }
    # the model volume comes from the PVC, mounted where MODEL_DIR points
    vols = {v["name"]: v for v in pod["spec"]["volumes"]}
    claim = vols["model"]["persistentVolumeClaim"]["claimName"]
    assert ("PersistentVolumeClaim", claim) in objs
    mounts = {m["name"]: m["mountPath"] for m in ctr["volumeMounts"]}
    env = {e["name"]: e.get("value") for e in ctr["env"]}
    assert env["MODEL_DIR"].startswith(mounts["model"] + "/")
    # the OpenAI API's key comes from an optional Secret (no key: the API is open)
    (key,) = [e for e in ctr["env"] if e["name"] == "GLM_OPENAI_API_KEY"]
    assert key["valueFrom"]["secretKeyRef"]["optional"] is True
    assert mounts["dshm"] == "/dev/shm" and vols["dshm"]["emptyDir"]["medium"] == "Memory"
    # the container's knobs and command are the entry point's
    entry = (DOCKER / "entrypoint.sh").read_text()
    for name in env:
        assert f"{name}" in entry, f"env {name} is not read by docker/entrypoint.sh"
    assert ctr["args"][0] in ("serve", "prepare") and f"  {ctr['args'][0]}" in entry
    job = objs[("Job", "chatglm-model-prepare")]
    jpod = job["spec"]["template"]["spec"]
    assert jpod["containers"][0]["args"] == ["prepare"]
    assert jpod["volumes"][0]["persistentVolumeClaim"]["claimName"] == claim


def test_k8s_hpa_scales_on_the_backend_queue_metric():
    objs = k8s_objects()
    hpa = objs[("HorizontalPodAutoscaler", "chatglm")]
    assert hpa["apiVersion"] == "autoscaling/v2"
    ref = hpa["spec"]["scaleTargetRef"]
    assert (ref["kind"], ref["name"]) == ("Deployment", "chatglm")
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods"
    name = metric["pods"]["metric"]["name"]
    assert name == "glm_waiting_sequences"
    # the backend really exports it, and the adapter rules publish it under that name
    metrics_cc = ROOT / "backend_src" / "triton" / "metrics.cc"
    assert f'"{name}"' in metrics_cc.read_text(), f"{name} is not a metric of the chatglm backend"
    rules = yaml.safe_load(
        objs[("ConfigMap", "glmserve-prometheus-adapter-rules")]["data"]["config.yaml"]
    )
    assert any(r["name"]["as"] == name and name in r["seriesQuery"] for r in rules["rules"])
    assert (
        hpa["spec"]["minReplicas"] >= 1 and hpa["spec"]["maxReplicas"] > hpa["spec"]["minReplicas"]
    )


def test_validator_needs_no_network_at_run_time():
    """The schemas ship inside the validator's wheel: once installed, validation
    must work without any network (run in a new network namespace where possible)."""
    if not shutil.which("unshare"):
        pytest.skip("unshare(1) is not available to cut the network")
    probe = run(["unshare", "-rn", "true"])
    if probe.returncode != 0:
        pytest.skip(f"cannot create a network namespace here: {probe.stderr.strip()}")
    env = {"VENV": str(VENV), "BUILD": str(BUILD)}
    warm = run(["bash", "docker/validate_k8s.sh", "docker/k8s/service.yaml"], env=env, timeout=600)
    assert warm.returncode == 0, out(warm)  # installs the validator if needed (network)
    proc = run(["unshare", "-rn", "bash", "docker/validate_k8s.sh"], env=env, timeout=300)
    assert proc.returncode == 0, out(proc)


# ------------------------------------------------------- the container's serve path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url: str, timeout: float = 2.0):
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return None, ""


def pytriton_home() -> Path | None:
    found = sorted(VENV.glob("lib/python3*/site-packages/pytriton/tritonserver"))
    return found[0] if found else None


@pytest.mark.server
@pytest.mark.skipif(
    not (BUILD / "backends/chatglm/libtriton_chatglm.so").is_file()
    or not (ROOT / "models/chatglm-tiny/model.safetensors").is_file()
    or pytriton_home() is None,
    reason="needs `make build`, `make demo-model` and nvidia-pytriton (make test provides them)",
)
def test_entrypoint_serves_through_an_image_like_server_layout(tmp_path):
    """The container's serve path on this machine: docker/entrypoint.sh serve ->
    scripts/serve.sh, with TRITONSERVER/TRITON_PYTHON_BACKEND pointing at a copy
    of the NGC image's layout (<root>/bin/tritonserver, <root>/backends/python
    with the stub of the venv's Python), made from nvidia-pytriton's server (the
    same 2.51.0). The server gets ready, serves the backend's HPA metric on the
    metrics port, runs as the entry point's own process (exec, so SIGTERM from
    Kubernetes reaches it) and stops cleanly on SIGTERM."""
    home = pytriton_home()
    site = home.parents[1]
    pyver = subprocess.run(
        [
            str(VENV / "bin/python"),
            "-c",
            "import sys; print(f'{sys.version_info[0]}.{sys.version_info[1]}')",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    opt = tmp_path / "opt-tritonserver"
    (opt / "bin").mkdir(parents=True)
    (opt / "backends/python").mkdir(parents=True)
    (opt / "bin/tritonserver").symlink_to(home / "bin/tritonserver")
    for name in ("libtriton_python.so", "triton_python_backend_utils.py"):
        shutil.copy2(home / "backends/python" / name, opt / "backends/python" / name)
    shutil.copy2(
        home / "python_backend_stubs" / pyver / "triton_python_backend_stub",
        opt / "backends/python",
    )
    http, grpc, metrics, openai_port = free_port(), free_port(), free_port(), free_port()
    env = dict(os.environ)
    env.update(
        {
            "OPENAI_PORT": str(openai_port),
            "VENV": str(VENV),
            "BUILD": str(BUILD),
            "MODEL_DIR": "",
            "DEVICE": "cpu",
            "HOST": "127.0.0.1",
            "HTTP_PORT": str(http),
            "GRPC_PORT": str(grpc),
            "METRICS_PORT": str(metrics),
            "TRITONSERVER": str(opt / "bin/tritonserver"),
            "TRITON_PYTHON_BACKEND": str(opt / "backends/python"),
            # the image's server finds its libraries itself; this copy needs pytriton's
            "LD_LIBRARY_PATH": str(site / "nvidia_pytriton.libs"),
        }
    )
    env.pop("TRITON_ARGS", None)
    log = (tmp_path / "server.log").open("w")
    proc = subprocess.Popen(
        ["bash", "docker/entrypoint.sh", "serve", "--log-info=true"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 180
        ready = False
        while time.monotonic() < deadline and proc.poll() is None:
            status, _ = http_get(f"http://127.0.0.1:{http}/v2/health/ready")
            if status == 200:
                ready = True
                break
            time.sleep(1)
        text = (tmp_path / "server.log").read_text()
        assert ready, f"not ready (rc={proc.poll()}):\n{text[-4000:]}"
        status, live = http_get(f"http://127.0.0.1:{http}/v2/health/live")
        assert status == 200
        status, body = http_get(f"http://127.0.0.1:{metrics}/metrics")
        assert status == 200 and re.search(r"^glm_waiting_sequences\{", body, re.M), body[:2000]
        # the OpenAI-compatible API beside it (scripts/serve.sh), ready with the decoder
        deadline = time.monotonic() + 60
        while http_get(f"http://127.0.0.1:{openai_port}/health")[0] != 200:
            assert time.monotonic() < deadline, (tmp_path / "server.log").read_text()[-4000:]
            time.sleep(0.5)
        # exec all the way down: the entry point's process is tritonserver itself
        argv0 = Path(f"/proc/{proc.pid}/cmdline").read_bytes().split(b"\0")[0].decode()
        external = "TRITON_PYTHON_BACKEND" in (ROOT / "scripts/triton_env.sh").read_text()
        expected = opt / "bin/tritonserver" if external else home / "bin/tritonserver"
        assert Path(argv0) == expected, (argv0, expected)
        assert "--log-info=true" in Path(f"/proc/{proc.pid}/cmdline").read_bytes().decode(
            errors="replace"
        )
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, (tmp_path / "server.log").read_text()[-4000:]
        # ... and it stops with the server
        deadline = time.monotonic() + 30
        while http_get(f"http://127.0.0.1:{openai_port}/health")[0] is not None:
            assert time.monotonic() < deadline, "the OpenAI API outlived tritonserver"
            time.sleep(0.5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        log.close()
