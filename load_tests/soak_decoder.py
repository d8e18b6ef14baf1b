"""Locust soak driver for ``chatglm_decoder`` (ids in, ids out), for servers without a
tokenizer, e.g. ChatGLM-6B's shapes with random weights on the GPU (issue 8's soak; see
scripts/gpu.sh soak and docs/reliability.md).

Each user sends one streamed request after another over gRPC (``load_tests.streaming``):
a prompt of random ids (16..512 plain ids, then [gMASK] <sop> of the served config,
``load_tests.workload.IdsSpec``), max_tokens 32..256, ignore_eos, and checks that exactly
max_tokens ids came back. Locust's statistics count one "gRPC generate" per request
(response_length = ids received); any error or short answer is a failure.

    locust -f load_tests/soak_decoder.py --headless -u 256 -r 32 -t 10m \
        --host 127.0.0.1:8001 --ids-config build/soak-6b/config.json
"""

from __future__ import annotations

import random
import sys
from pathlib import Path
from typing import Any

import gevent
import grpc.experimental.gevent as grpc_gevent
from locust import User, constant, events, task

grpc_gevent.init_gevent()

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from load_tests.streaming import DECODER, Stream  # noqa: E402
from load_tests.workload import IdsSpec, Request  # noqa: E402

_IDS: dict[str, IdsSpec] = {"spec": IdsSpec()}


@events.init_command_line_parser.add_listener
def _args(parser: Any) -> None:
    parser.add_argument("--ids-config", default="", help="config.json of the served checkpoint")
    parser.add_argument("--request-timeout", type=float, default=600.0)


@events.init.add_listener
def _init(environment: Any, **_: Any) -> None:
    opts = environment.parsed_options
    if opts is not None:
        _IDS["spec"] = IdsSpec.from_config(opts.ids_config)


class DecoderUser(User):
    wait_time = constant(0)
    host = "127.0.0.1:8001"

    def on_start(self) -> None:
        opts = self.environment.parsed_options
        self.stream = Stream("grpc", self.host, DECODER, timeout=opts.request_timeout)
        self.rng = random.Random()

    def on_stop(self) -> None:
        self.stream.close()

    @task
    def generate(self) -> None:
        prompt = _IDS["spec"].prompt(self.rng.randint(16, 512), self.rng)
        rec = self.stream.send(Request(prompt, self.rng.randint(32, 256)))
        error = rec.failure
        self.environment.events.request.fire(
            request_type="gRPC",
            name="generate decoder",
            response_time=rec.latency * 1e3,
            response_length=rec.tokens,
            exception=RuntimeError(error) if error else None,
            context={},
        )
        if error is not None:
            gevent.sleep(1.0)  # no busy loop while the server is down
