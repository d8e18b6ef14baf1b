"""Locust suite for the ChatGLM Triton server: streamed requests over tritonclient's gRPC
API (``ChatGLMUser``) and streamed chat completions through the OpenAI-compatible server
(``OpenAIUser``, ``--openai-host``).

Run headless through ``make load-test`` (scripts/load_test.sh; ``LOCUST_CLASSES``), or
with the web UI, naming the user classes (both: the users are split evenly between them,
so one run compares the two paths under the same load)::

    .venv/bin/locust -f load_tests/locustfile.py --host 127.0.0.1:8001 --prompts seed ChatGLMUser
    .venv/bin/locust -f load_tests/locustfile.py --host 127.0.0.1:8001 \
        --openai-host 127.0.0.1:9000 ChatGLMUser OpenAIUser

Each request is reported as ``gRPC generate <set>`` (``OpenAI chat <set>``) with its
full time (response length = tokens generated), its time to first token as ``TTFT <set>``
(``TTFT <set> openai``), and every gap between two tokens as ``ITL <set>`` (``ITL <set>
openai``). Tokens are the sum of the streamed responses' ``token_count`` on gRPC (see
load_tests/streaming.py) and the growth of ``completion_tokens`` from chunk to chunk on
the OpenAI API (load_tests/openai_stream.py). Aggregate tokens/s, exact TTFT/ITL
percentiles and a per-second time series (``load_tests.stats.Meter``, one per transport
plus their sum) are written next to Locust's CSVs (``<csv prefix>_glm_metrics.json``,
with ``by_transport``, / ``_glm_timeseries.csv``) and served by the web UI at
``/glm-metrics``.
"""

from __future__ import annotations

import itertools
import os
import sys
import time
from pathlib import Path
from typing import Any

import gevent
import grpc.experimental.gevent as grpc_gevent
from gevent import GreenletExit
from locust import User, constant, events, task
from locust.runners import MasterRunner, WorkerRunner

# grpc must cooperate with gevent before any channel is created.
grpc_gevent.init_gevent()

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from load_tests.openai_stream import OpenAIStream  # noqa: E402
from load_tests.prompts import Conversation, load_set  # noqa: E402
from load_tests.stats import Meter, Record  # noqa: E402
from load_tests.streaming import Stream  # noqa: E402
from load_tests.workload import Request  # noqa: E402

TRANSPORTS = ("gRPC", "OpenAI")
METERS = {name: Meter() for name in TRANSPORTS}
USERS: dict[str, dict[str, int]] = {n: {"now": 0, "peak": 0} for n in TRANSPORTS}
WORKER_USERS: dict[str, dict[str, int]] = {}  # the master: each worker's peaks
ERROR_BACKOFF_S = 1.0  # a user pauses this long after a failed request
WINDOW: dict[str, float] = {}
_STATE: dict[str, Any] = {"set": None, "name": None, "counter": itertools.count()}


@events.init_command_line_parser.add_listener
def _add_arguments(parser: Any) -> None:
    parser.add_argument(
        "--prompts",
        default=os.environ.get("PROMPTS", "seed"),
        help="prompt set: seed, mixed, chat, or a .jsonl file (env PROMPTS)",
        include_in_web_ui=True,
    )
    parser.add_argument(
        "--check-length",
        choices=["on", "off"],
        default="on",
        help="fail ignore_eos requests that return fewer/more than max_tokens tokens",
        include_in_web_ui=True,
    )
    parser.add_argument(
        "--request-timeout",
        type=float,
        default=600.0,
        help="seconds to wait for the next streamed response",
    )
    parser.add_argument(
        "--openai-host",
        default=os.environ.get("OPENAI_HOST_PORT", "127.0.0.1:9000"),
        help="OpenAIUser: the OpenAI-compatible server's host:port (env OPENAI_HOST_PORT)",
        include_in_web_ui=True,
    )
    parser.add_argument(
        "--openai-model",
        default="",
        help="OpenAIUser: the model id (default: the first of GET /v1/models)",
    )
    parser.add_argument(
        "--openai-logprobs",
        choices=["on", "off"],
        default=os.environ.get("OPENAI_LOGPROBS", "off"),
        help="OpenAIUser: ask for logprobs, so that every token streams a chunk (TTFT of a "
        "random model whose ids decode to no text; env OPENAI_LOGPROBS)",
    )
    parser.add_argument(
        "--openai-api-key",
        default=os.environ.get("GLM_OPENAI_API_KEY", ""),
        help="OpenAIUser: the API key (default: env GLM_OPENAI_API_KEY)",
    )


def _wall_offset() -> float:
    """time.time() - time.perf_counter(): the requests' clock to wall-clock time."""
    return time.time() - time.perf_counter()


def _host_to_url(host: str | None) -> str:
    host = (host or "127.0.0.1:8001").strip()
    for scheme in ("grpc://", "http://"):
        if host.startswith(scheme):
            host = host[len(scheme) :]
    return host.rstrip("/")


def _prompt_set(name: str) -> list[Conversation]:
    if _STATE["name"] != name:
        _STATE["set"] = load_set(name)
        _STATE["name"] = name
    return _STATE["set"]


def combined() -> Meter:
    """The transports' meters summed (they keep their data)."""
    total = Meter()
    for meter in METERS.values():
        total.merge(meter.data())
    return total


@events.test_start.add_listener
def _on_test_start(environment: Any, **_: Any) -> None:
    for meter in METERS.values():
        meter.drain()
    for count in USERS.values():
        count["peak"] = count["now"]
    WINDOW.clear()
    WINDOW["start"] = time.time()


@events.test_stop.add_listener
def _on_test_stop(environment: Any, **_: Any) -> None:
    WINDOW["stop"] = time.time()


@events.report_to_master.add_listener
def _report(client_id: str, data: dict[str, Any]) -> None:
    data["glm_meters"] = {name: meter.drain() for name, meter in METERS.items()}
    data["glm_users"] = {name: u["peak"] for name, u in USERS.items()}


@events.worker_report.add_listener
def _merge(client_id: str, data: dict[str, Any]) -> None:
    for name, part in data.get("glm_meters", {}).items():
        METERS[name].merge(part)
    WORKER_USERS[client_id] = data.get("glm_users", {})


@events.quitting.add_listener
def _write(environment: Any, **_: Any) -> None:
    if isinstance(environment.runner, WorkerRunner):
        return
    opts = environment.parsed_options
    window = {"start": WINDOW.get("start"), "stop": WINDOW.get("stop", time.time())}
    if window["start"] is None:
        return
    total = combined()
    by_transport = {n: m.summary(**window) for n, m in METERS.items() if m.first is not None}
    for name, summary in [("glm", total.summary(**window)), *by_transport.items()]:
        print(
            f"{name}: {summary['tokens']} tokens in {summary['duration_s']:.1f} s = "
            f"{summary['tokens_per_s']:.1f} tokens/s; {summary['requests']} requests, "
            f"{summary['failures']} failures",
            file=sys.stderr,
        )
    prefix = getattr(opts, "csv_prefix", None)
    if prefix:
        peaks = [{n: u["peak"] for n, u in USERS.items()}, *WORKER_USERS.values()]
        users = {n: sum(p.get(n, 0) for p in peaks) for n in TRANSPORTS}
        extra = {
            "prompts": opts.prompts,
            "users": opts.num_users,
            "host": environment.host,
            "openai_host": opts.openai_host,
            "window": window,
            "by_transport": by_transport,
            "users_by_transport": users,
        }
        total.write(prefix, extra=extra, **window)


@events.init.add_listener
def _on_init(environment: Any, **_: Any) -> None:
    opts = environment.parsed_options
    if opts is not None and not isinstance(environment.runner, MasterRunner):
        _prompt_set(opts.prompts)  # build the set once, before the run's clock starts
        gevent.get_hub().loop.update_now()
    if environment.web_ui is None:
        return

    @environment.web_ui.app.route("/glm-metrics")
    def glm_metrics() -> dict[str, Any]:
        window = {"start": WINDOW.get("start"), "stop": WINDOW.get("stop", time.time())}
        if not window["start"]:
            return {"status": "not started"}
        summary = combined().summary(**window)
        summary["by_transport"] = {
            n: m.summary(**window) for n, m in METERS.items() if m.first is not None
        }
        return summary


class _StreamingUser(User):
    """A closed-loop user: one streamed request after another over its own connection.
    Subclasses name the transport (``transport``) and open it (``open_stream``)."""

    abstract = True
    wait_time = constant(0)
    transport = "gRPC"
    request_name = "generate"

    def open_stream(self, opts: Any) -> Any:
        raise NotImplementedError

    def on_start(self) -> None:
        opts = self.environment.parsed_options
        self.set_name = Path(opts.prompts).stem if opts.prompts.endswith(".jsonl") else opts.prompts
        self.check_length = opts.check_length == "on"
        self.meter = METERS[self.transport]
        self.suffix = "" if self.transport == "gRPC" else f" {self.transport.lower()}"
        count = USERS[self.transport]
        count["now"] += 1
        count["peak"] = max(count["peak"], count["now"])
        self.stream = self.open_stream(opts)

    def on_stop(self) -> None:
        USERS[self.transport]["now"] -= 1
        # A request cut off by the end of the test: count the tokens it got.
        current = getattr(getattr(self, "stream", None), "current", None)
        if current is not None and current.token_times:
            current.end = time.perf_counter()
            self.meter.add(current, None, _wall_offset())
        if getattr(self, "stream", None) is not None:
            self.stream.close()

    @task
    def conversation(self) -> None:
        convs = _prompt_set(self.environment.parsed_options.prompts)
        conv = convs[next(_STATE["counter"]) % len(convs)]
        history = [list(turn) for turn in conv.history]
        for query in conv.turns:
            rec = self._request(conv, query, history)
            if rec.error is not None:
                gevent.sleep(ERROR_BACKOFF_S)  # no busy loop while the server is down
                return
            history.append([query, rec.text])

    def _request(self, conv: Conversation, query: str, history: list[list[str]]) -> Record:
        try:
            rec = self.stream.send(
                Request(query, conv.max_tokens, conv.ignore_eos, history or None)
            )
        except GreenletExit:
            raise
        if not self.check_length:
            rec.expected = None
        error = rec.failure
        self.meter.add(rec, error is None, _wall_offset())
        fire = self.environment.events.request.fire
        fire(
            request_type=self.transport,
            name=f"{self.request_name} {self.set_name}",
            response_time=rec.latency * 1e3,
            response_length=rec.tokens,
            exception=RuntimeError(error) if error else None,
            context={},
        )
        if error is None and rec.ttft is not None:
            fire(
                request_type="TTFT",
                name=self.set_name + self.suffix,
                response_time=rec.ttft * 1e3,
                response_length=0,
                exception=None,
                context={},
            )
            for gap in rec.itls:
                fire(
                    request_type="ITL",
                    name=self.set_name + self.suffix,
                    response_time=gap * 1e3,
                    response_length=0,
                    exception=None,
                    context={},
                )
        return rec


class ChatGLMUser(_StreamingUser):
    """Streams from the ``chatglm`` ensemble over Triton's gRPC stream (``--host``)."""

    host = "127.0.0.1:8001"

    def open_stream(self, opts: Any) -> Stream:
        return Stream("grpc", _host_to_url(self.host), timeout=opts.request_timeout)


class OpenAIUser(_StreamingUser):
    """Streamed chat completions through the OpenAI-compatible server (``--openai-host``):
    the same prompts, greedy, the same max_tokens and ignore_eos as ChatGLMUser."""

    transport = "OpenAI"
    request_name = "chat"

    def open_stream(self, opts: Any) -> OpenAIStream:
        return OpenAIStream(
            _host_to_url(opts.openai_host),
            model=opts.openai_model or None,
            api_key=opts.openai_api_key or None,
            timeout=opts.request_timeout,
            logprobs=opts.openai_logprobs == "on",
        )


# Importing this file (tritonclient, numpy, ...) blocks the gevent loop for a while;
# refresh its cached clock so that Locust's --run-time timer counts from now.
gevent.get_hub().loop.update_now()
