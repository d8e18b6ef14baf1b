"""Locust suite for the ChatGLM Triton server, streaming over tritonclient's gRPC API.

Run headless through ``make load-test`` (scripts/load_test.sh), or with the web UI::

    .venv/bin/locust -f load_tests/locustfile.py --host 127.0.0.1:8001 --prompts seed

Each request is reported as ``gRPC generate <set>`` with its full time (response
length = tokens generated), its time to first token as ``TTFT <set>``, and every gap
between two tokens as ``ITL <set>``. Tokens are the sum of the streamed responses'
``token_count`` (one response may carry several tokens; see load_tests/streaming.py).
Aggregate tokens/s, exact TTFT/ITL percentiles and a per-second time series
(``load_tests.stats.Meter``) are written next to Locust's CSVs
(``<csv prefix>_glm_metrics.json`` / ``_glm_timeseries.csv``) and served by the web
UI at ``/glm-metrics``. Requests go through ``load_tests.streaming.Stream`` (gRPC).
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
from load_tests.prompts import Conversation, load_set  # noqa: E402
from load_tests.stats import Meter, Record  # noqa: E402
from load_tests.streaming import Stream  # noqa: E402
from load_tests.workload import Request  # noqa: E402

METER = Meter()
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


@events.test_start.add_listener
def _on_test_start(environment: Any, **_: Any) -> None:
    METER.drain()
    WINDOW.clear()
    WINDOW["start"] = time.time()


@events.test_stop.add_listener
def _on_test_stop(environment: Any, **_: Any) -> None:
    WINDOW["stop"] = time.time()


@events.report_to_master.add_listener
def _report(client_id: str, data: dict[str, Any]) -> None:
    data["glm_meter"] = METER.drain()


@events.worker_report.add_listener
def _merge(client_id: str, data: dict[str, Any]) -> None:
    if "glm_meter" in data:
        METER.merge(data["glm_meter"])


@events.quitting.add_listener
def _write(environment: Any, **_: Any) -> None:
    if isinstance(environment.runner, WorkerRunner):
        return
    opts = environment.parsed_options
    window = {"start": WINDOW.get("start"), "stop": WINDOW.get("stop", time.time())}
    if window["start"] is None:
        return
    summary = METER.summary(**window)
    print(
        f"glm: {summary['tokens']} tokens in {summary['duration_s']:.1f} s = "
        f"{summary['tokens_per_s']:.1f} tokens/s; {summary['requests']} requests, "
        f"{summary['failures']} failures",
        file=sys.stderr,
    )
    prefix = getattr(opts, "csv_prefix", None)
    if prefix:
        extra = {
            "prompts": opts.prompts,
            "users": opts.num_users,
            "host": environment.host,
            "window": window,
        }
        METER.write(prefix, extra=extra, **window)


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
        return METER.summary(**window) if window["start"] else {"status": "not started"}


class ChatGLMUser(User):
    """A closed-loop user: one streamed request after another over its own gRPC connection."""

    wait_time = constant(0)
    host = "127.0.0.1:8001"

    def on_start(self) -> None:
        opts = self.environment.parsed_options
        self.set_name = Path(opts.prompts).stem if opts.prompts.endswith(".jsonl") else opts.prompts
        self.check_length = opts.check_length == "on"
        self.stream = Stream("grpc", _host_to_url(self.host), timeout=opts.request_timeout)

    def on_stop(self) -> None:
        # A request cut off by the end of the test: count the tokens it got.
        current = getattr(self.stream, "current", None)
        if current is not None and current.token_times:
            current.end = time.perf_counter()
            METER.add(current, None, _wall_offset())
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
        METER.add(rec, error is None, _wall_offset())
        fire = self.environment.events.request.fire
        fire(
            request_type="gRPC",
            name=f"generate {self.set_name}",
            response_time=rec.latency * 1e3,
            response_length=rec.tokens,
            exception=RuntimeError(error) if error else None,
            context={},
        )
        if error is None and rec.ttft is not None:
            fire(
                request_type="TTFT",
                name=self.set_name,
                response_time=rec.ttft * 1e3,
                response_length=0,
                exception=None,
                context={},
            )
            for gap in rec.itls:
                fire(
                    request_type="ITL",
                    name=self.set_name,
                    response_time=gap * 1e3,
                    response_length=0,
                    exception=None,
                    context={},
                )
        return rec


# Importing this file (tritonclient, numpy, ...) blocks the gevent loop for a while;
# refresh its cached clock so that Locust's --run-time timer counts from now.
gevent.get_hub().loop.update_now()
