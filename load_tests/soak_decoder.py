"""Locust soak driver for ``chatglm_decoder`` (ids in, ids out), for servers without a
tokenizer, e.g. ChatGLM-6B's shapes with random weights on the GPU (issue 8's soak; see
scripts/reliability_soak.sh and docs/reliability.md).

Each user sends one streamed request after another over its own gRPC stream: a prompt of
random ids (16..512 plain ids, then [gMASK] <sop> of the served config), max_tokens 32..256,
ignore_eos, and checks that exactly max_tokens ids came back. Locust's statistics count one
"gRPC generate" per request (response_length = ids received); any error or short answer is
a failure.

    locust -f load_tests/soak_decoder.py --headless -u 256 -r 32 -t 10m \
        --host 127.0.0.1:8001 --ids-config build/soak-6b/config.json
"""

from __future__ import annotations

import json
import random
import time

import gevent
import grpc.experimental.gevent as grpc_gevent
from locust import User, constant, events, task

grpc_gevent.init_gevent()

from load_tests.streaming import DECODER, StreamSession  # noqa: E402

_IDS = {"gmask": 130001, "bos": 130004, "vocab": 130528}


@events.init_command_line_parser.add_listener
def _args(parser) -> None:
    parser.add_argument("--ids-config", default="", help="config.json of the served checkpoint")
    parser.add_argument("--request-timeout", type=float, default=600.0)


@events.init.add_listener
def _init(environment, **_) -> None:
    opts = environment.parsed_options
    if opts is not None and opts.ids_config:
        with open(opts.ids_config, encoding="utf-8") as f:
            cfg = json.load(f)
        _IDS.update(
            gmask=int(cfg["gmask_token_id"]), bos=int(cfg["bos_token_id"]),
            vocab=int(cfg["vocab_size"]),
        )  # fmt: skip


class DecoderUser(User):
    wait_time = constant(0)
    host = "127.0.0.1:8001"

    def on_start(self) -> None:
        opts = self.environment.parsed_options
        self.session = StreamSession(self.host, timeout=opts.request_timeout, model=DECODER)
        self.rng = random.Random()

    def on_stop(self) -> None:
        self.session.close()

    @task
    def generate(self) -> None:
        n = self.rng.randint(16, 512)
        hi = min(_IDS["vocab"], _IDS["gmask"]) - 1
        prompt = [self.rng.randint(5, hi) for _ in range(n)] + [_IDS["gmask"], _IDS["bos"]]
        max_tokens = self.rng.randint(32, 256)
        t0 = time.perf_counter()
        rec = self.session.request(prompt, max_tokens, True)
        error = rec.error
        if error is None and rec.tokens != max_tokens:
            error = f"expected {max_tokens} ids, got {rec.tokens}"
        self.environment.events.request.fire(
            request_type="gRPC",
            name="generate decoder",
            response_time=(time.perf_counter() - t0) * 1e3,
            response_length=rec.tokens,
            exception=RuntimeError(error) if error else None,
            context={},
        )
        if error is not None:
            gevent.sleep(1.0)  # no busy loop while the server is down
