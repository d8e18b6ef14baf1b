"""Helpers shared by the server suites (tests/server/test_reliability_*.py, tests/server/test_triton.py);
no tests here.

Everything talks to 127.0.0.1 only, every wait has a deadline, and every
stream is closed by the helper that opened it.
"""

from __future__ import annotations

import http.client
import json
import os
import queue
import re
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from glmserve import contract
from helpers.tritonserver import DEFAULT_CHECKPOINT, skip_without_server  # noqa: F401 (re-exported)

# Tiny model facts, read from its config (the context is the real model's 2048).
_CFG = (
    json.loads((DEFAULT_CHECKPOINT / "config.json").read_text())
    if (DEFAULT_CHECKPOINT / "config.json").exists()
    else {}
)
CONTEXT = int(_CFG.get("max_sequence_length", 2048))
VOCAB = int(_CFG.get("vocab_size", 1024))
GMASK = int(_CFG.get("gmask_token_id", 681))
SOP = int(_CFG.get("bos_token_id", 684))

# The request fields' wire types, from the request contract (glmserve/contract.py).
TYPES = {
    f.name: (f.dtype.value, np.dtype(f.dtype.numpy).type)
    for f in contract.FIELDS
    if f.dtype is not contract.DType.BYTES
}
NP_TO_TRITON = {
    np.dtype(np.int32): "INT32",
    np.dtype(np.int64): "INT64",
    np.dtype(np.uint64): "UINT64",
    np.dtype(np.float32): "FP32",
    np.dtype(np.float64): "FP64",
    np.dtype(np.bool_): "BOOL",
    np.dtype(np.object_): "BYTES",
}

# Every client-side wait is bounded by this (a hang turns into a failure).
CLIENT_TIMEOUT = 60.0


def tensor(name: str, value, dtype=None) -> tuple[str, str, np.ndarray]:
    arr = np.asarray(value, dtype=dtype)
    return name, NP_TO_TRITON[arr.dtype], arr


def text_tensors(text: str | bytes | None, history: str | bytes | None = None, **params) -> list:
    """Inputs of the `chatglm` ensemble, batch dimension included ([1, 1] each)."""
    out = []
    if text is not None:
        raw = text if isinstance(text, bytes) else text.encode("utf-8")
        out.append(tensor("text_input", [[raw]], np.object_))
    if history is not None:
        raw = history if isinstance(history, bytes) else history.encode("utf-8")
        out.append(tensor("history", [[raw]], np.object_))
    for name, value in params.items():
        out.append(tensor(name, [[value]], TYPES[name][1]))
    return out


def id_tensors(ids, **params) -> list:
    """Inputs of `chatglm_decoder`: input_ids [1, n] + scalars [1, 1]."""
    out = [tensor("input_ids", [list(ids)], np.int32)]
    for name, value in params.items():
        out.append(tensor(name, [[value]], TYPES[name][1]))
    return out


def prompt_ids(k: int = 3, start: int = 5) -> list[int]:
    """A valid decoder prompt of k plain ids followed by [gMASK] <sop>."""
    return [start + i for i in range(k)] + [GMASK, SOP]


def to_grpc(tensors) -> list:
    out = []
    for name, dt, arr in tensors:
        t = grpcclient.InferInput(name, list(arr.shape), dt)
        t.set_data_from_numpy(arr)
        out.append(t)
    return out


class Stream:
    """One gRPC stream carrying one request; collects its responses.

    ``stream_timeout`` (seconds) bounds the whole gRPC stream on the client side;
    ``request_timeout_us`` is the request's Triton timeout; ``parameters`` are
    request parameters. ``next``/``collect`` wait at most ``timeout`` seconds a response.
    """

    def __init__(
        self,
        url: str,
        model: str,
        tensors,
        output: str = "text_output",
        stream_timeout: float | None = None,
        request_timeout_us: int | None = None,
        parameters: dict | None = None,
    ) -> None:
        self.client = grpcclient.InferenceServerClient(url)
        self.q: queue.Queue = queue.Queue()
        self.output = output
        self.client.start_stream(
            callback=lambda result, error: self.q.put((result, error)),
            stream_timeout=stream_timeout,
        )
        kwargs = {}
        if request_timeout_us is not None:
            kwargs["timeout"] = request_timeout_us
        if parameters:
            kwargs["parameters"] = parameters
        self.client.async_stream_infer(
            model, to_grpc(tensors), request_id="r", enable_empty_final_response=True, **kwargs
        )

    def next(self, timeout: float = CLIENT_TIMEOUT):
        """-> ("data", value) | ("final", value-or-None) | ("error", message)."""
        result, error = self.q.get(timeout=timeout)
        if error is not None:
            return "error", str(error)
        resp = result.get_response()
        final = resp.parameters.get("triton_final_response")
        value = result.as_numpy(self.output)
        if final is not None and final.bool_param:
            return "final", value
        return "data", value

    def collect(self, timeout: float = CLIENT_TIMEOUT) -> tuple[list, str | None]:
        values, error = [], None
        while True:
            kind, value = self.next(timeout)
            if kind == "error":
                error = value
                break
            if value is not None:
                values.append(value)
            if kind == "final":
                break
        return values, error

    def close(self, cancel: bool = False) -> None:
        try:
            self.client.stop_stream(cancel_requests=cancel)
        finally:
            self.client.close()


class SseStream:
    """One HTTP ``/generate_stream`` request (server-sent events); ``close()`` drops the
    connection, which cancels the request. Used where a test only needs requests held open
    and then cancelled: tritonserver 2.51's gRPC front end can crash completing a stream
    cancellation (docs/reliability_requests.md, R5 item 3), its HTTP front end has not."""

    def __init__(self, http_url: str, model: str, body: dict, timeout: float = CLIENT_TIMEOUT):
        host, port = http_url.rsplit(":", 1)
        self.conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
        # Sent now; the answer is read by next() (a queued request has no headers yet).
        self.conn.request(
            "POST",
            f"/v2/models/{model}/generate_stream",
            json.dumps(body),
            {"Content-Type": "application/json"},
        )
        self.resp: http.client.HTTPResponse | None = None

    def next(self) -> tuple[str, object]:
        """-> ("data", event) | ("error", message) | ("end", None)."""
        if self.resp is None:
            self.resp = self.conn.getresponse()
        while True:
            line = self.resp.readline()
            if not line:
                return "end", None
            if line.startswith(b"data:"):
                event = json.loads(line[5:])
                if "error" in event:
                    return "error", event["error"]
                return "data", event

    def close(self) -> None:
        self.conn.close()


def cancel_streams(streams: list[Stream], srv) -> None:
    """Cancels decoder streams one at a time, each once the server has ended the one before
    (its ``glm_active_requests`` dropped): tritonserver 2.51's gRPC front end can crash on
    concurrent stream cancellations (docs/reliability_requests.md, R5 item 3)."""
    left = srv.metric("glm_active_requests")
    for s in streams:
        s.close(cancel=True)
        left = max(left - 1, 0)
        srv.wait_metric("glm_active_requests", lambda v, n=left: v <= n, timeout=30)


UPSTREAM_GRPC_CRASH = (
    "tritonserver 2.51's gRPC front end crashed completing a stream cancellation, inside the "
    "tritonserver binary (upstream triton-inference-server/server#7368, fixed in 24.12; "
    "R5 items 3 and 5 in docs/reliability_requests.md)"
)


# One frame of the stack that tritonserver's own signal handler prints (boost::stacktrace),
# e.g. " 2# 0x0000562394AE90C4 in /venv/.../pytriton/tritonserver/bin/tritonserver" or
# " 3# pthread_cond_clockwait in /lib/x86_64-linux-gnu/libc.so.6". The binary is stripped,
# so its frames have no names; its gRPC (and HTTP) front ends are compiled into it, while
# the core (libtritonserver*.so) and the backends are shared libraries.
_FRAME_RE = re.compile(r"^\s*(\d+)# (.*?) in (\S+)\s*$")
# Where signal delivery, abort() and std::terminate run: skipped to find the faulting frame.
_SYSTEM_LIBS = ("libc.so", "libc-", "libpthread", "libstdc++", "libgcc_s", "ld-linux", "libm.so")


def crash_frames(log: str) -> tuple[str, list[tuple[int, str]]] | None:
    """(signal line, [(frame number, object path)] innermost first) of the first fatal signal
    that tritonserver's handler logged in ``log``, or None when it logged none."""
    m = re.search(r"Signal \((11|6)\) received\.?", log)
    if m is None:
        return None
    frames = []
    for line in log[m.end() :].splitlines()[1:80]:
        f = _FRAME_RE.match(line)
        if f is None:
            if frames:
                break  # the stack is over
            continue
        frames.append((int(f.group(1)), f.group(3)))
    return m.group(0), sorted(frames)  # some versions print the frames outermost first


def is_upstream_grpc_crash(log: str) -> tuple[bool, str]:
    """Whether ``log`` shows the upstream gRPC front-end crash, and why (or why not).

    The signature: a fatal signal whose faulting frame (the first after the handler's own
    frame 0 and the system libraries' signal/abort/terminate frames) is in the tritonserver
    binary, where the gRPC front end lives, and no frame anywhere in our backend library.
    A crash inside libtritonserver (the core our backend calls), in our library, or one
    whose stack never reaches the binary is not excused."""
    found = crash_frames(log)
    if found is None:
        return False, "no fatal signal in the log"
    sig, frames = found
    if any("libtriton_chatglm" in path for _, path in frames):
        return False, f"{sig} with a frame in our backend library"
    inner = [
        path
        for n, path in frames[1:]
        if not any(s in path.rsplit("/", 1)[-1] for s in _SYSTEM_LIBS)
    ]
    if not inner:
        return False, f"{sig}: no frame outside the signal handler and system libraries"
    if inner[0].rsplit("/", 1)[-1] != "tritonserver":
        return False, f"{sig}: the faulting frame is in {inner[0]}, not in the gRPC front end"
    return True, sig


def xfail_on_upstream_grpc_crash(srv) -> None:
    """Marks the running test xfail when ``srv`` has died of the upstream gRPC cancellation
    crash (`is_upstream_grpc_crash`: the faulting frame in the tritonserver binary's gRPC
    front end, none in our library). Returns (and the test goes on to fail or pass on its
    own checks) when the server is alive or died any other way."""
    if srv.process is not None and srv.process.poll() is None:
        return
    upstream, why = is_upstream_grpc_crash(srv.log())
    if upstream:
        pytest.xfail(f"{UPSTREAM_GRPC_CRASH}: {why}")


def run_stream(url: str, model: str, tensors, output: str = "text_output", **kw):
    """Sends one request, waits (bounded) for its end. -> (values, error)."""
    s = Stream(url, model, tensors, output, **kw)
    try:
        return s.collect()
    finally:
        s.close()


def text_of(values) -> str:
    return "".join(v.reshape(-1)[0].decode("utf-8") for v in values)


def ids_of(values) -> list[int]:
    return [int(x) for v in values for x in v.reshape(-1)]


def generate_text(url: str, text: str, **params) -> tuple[str, str | None]:
    values, err = run_stream(url, "chatglm", text_tensors(text, **params))
    return text_of(values), err


def generate_ids(url: str, ids, **params) -> tuple[list[int], str | None]:
    values, err = run_stream(url, "chatglm_decoder", id_tensors(ids, **params), "output_ids")
    return ids_of(values), err


def error_code(message: str | None) -> str | None:
    """tritonclient's gRPC error text starts with the status, e.g. 'StatusCode.INVALID_ARGUMENT'."""
    if message is None:
        return None
    m = re.search(r"StatusCode\.([A-Z_]+)", message)
    return m.group(1) if m else None


def http_get(url: str, timeout: float = 10.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")


def http_post(url: str, body: dict | None = None, timeout: float = 120.0) -> tuple[int, str]:
    data = json.dumps(body or {}).encode()
    req = urllib.request.Request(
        url, data=data, headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")


def model_ready(srv, model: str) -> bool:
    return http_get(f"http://{srv.http_url}/v2/models/{model}/ready")[0] == 200


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS (kB) and Threads of a process, from /proc/<pid>/status."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "Threads"):
            out[key] = int(value.split()[0])
    return out


def server_pid(srv) -> int:
    assert srv.process is not None and srv.process.poll() is None, "server is not running"
    return srv.process.pid


def wait_until(predicate, timeout: float = 30.0, interval: float = 0.1, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"{what} did not hold within {timeout}s")


def run_threads(fn, n: int, timeout: float = 300.0) -> None:
    """Runs fn(i) for i < n on threads; re-raises the first exception; bounded."""
    errors: list[BaseException] = []

    def wrap(i):
        try:
            fn(i)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=wrap, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    alive = sum(t.is_alive() for t in threads)
    if errors:
        raise errors[0]
    assert alive == 0, f"{alive} client threads still running after {timeout}s (hang)"


def record(name: str, **values) -> None:
    """Prints one line of figures (pytest -s shows it; docs/reliability.md quotes them)."""
    line = " ".join(f"{k}={v}" for k, v in values.items())
    print(f"\n[reliability] {name}: {line}", flush=True)
    path = os.environ.get("RELIABILITY_LOG")
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(f"{name}: {line}\n")
