"""Client disconnects and concurrency through the OpenAI-compatible server, proven at the
engine (the decoder's metrics), on the session's tritonserver.

The OpenAI server talks to ``chatglm_decoder`` over Triton's HTTP ``/generate_stream`` and,
when its client goes away, closes that connection; Triton 2.51 then cancels the decoder
request. Neither the gRPC stream cancellation (which can crash 2.51's gRPC front end) nor
ensemble cancellation (which 2.51 does not pass on) is involved.

The requests are sized from the measured speed: 16 choices (16 sequences per engine step)
of every token the context leaves, ``ignore_eos``, so that running to the end would take
many times the bound within which the engine must be idle again. The counts make the
proof independent of timing: the request ends as ``cancelled`` (not ``ok``) in
``glm_requests_total``, and the engine ran fewer steps than the request would need.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import openai
import pytest
from helpers.openai_server import API_KEY

pytestmark = pytest.mark.server

MODEL = "chatglm-tiny"
N = 16  # choices of the long request
PROMPT = [{"role": "user", "content": "你好"}]
LONG = dict(temperature=1.0, seed=7, n=N, extra_body={"ignore_eos": True})


@dataclass(frozen=True)
class Engine:
    steps: float
    tokens: float
    running: float
    kv_used: float
    ok: float
    cancelled: float


def engine(srv) -> Engine:
    return Engine(
        srv.metric("glm_engine_steps_total"),
        srv.metric("glm_generated_tokens_total"),
        srv.metric("glm_running_sequences"),
        srv.metric("glm_kv_blocks_used"),
        srv.metric("glm_requests_total", {"outcome": "ok"}),
        srv.metric("glm_requests_total", {"outcome": "cancelled"}),
    )


def settle(srv) -> Engine:
    """Wait until nothing runs, then return the engine's state."""
    srv.wait_metric("glm_running_sequences", lambda v: v == 0, timeout=120)
    srv.wait_metric("glm_waiting_sequences", lambda v: v == 0, timeout=120)
    return engine(srv)


def steps_per_second(client: openai.OpenAI, srv) -> float:
    """Engine steps per second of the long request's shape (N choices), measured on a short
    run of it (a measurement, nothing asserted on it)."""
    before = settle(srv)
    t0 = time.perf_counter()
    r = client.chat.completions.create(model=MODEL, messages=PROMPT, max_tokens=32, **LONG)
    seconds = time.perf_counter() - t0
    assert r.usage.completion_tokens == 32 * N
    after = settle(srv)
    return (after.steps - before.steps) / seconds


@pytest.fixture
def sized(openai_client, triton_server):
    """(max_tokens, bound in seconds) for a long request: every token the context leaves,
    and a quarter of the time running it to the end would take."""
    prompt_tokens = openai_client.chat.completions.create(
        model=MODEL, messages=PROMPT, max_tokens=1, temperature=0
    ).usage.prompt_tokens
    max_tokens = 2048 - prompt_tokens
    speed = steps_per_second(openai_client, triton_server)
    natural = max_tokens / speed
    return max_tokens, max(natural / 4, 1.0), natural


def _check_cancelled(srv, before: Engine, idle_kv: float, max_tokens: int, bound: float, what: str):
    srv.wait_metric("glm_running_sequences", lambda v: v == 0, timeout=bound)
    srv.wait_metric("glm_kv_blocks_used", lambda v: v == idle_kv, timeout=bound)
    after = engine(srv)
    assert after.cancelled == before.cancelled + 1, f"{what}: not cancelled in the engine"
    assert after.ok == before.ok, f"{what}: the request ran to its end"
    assert after.steps - before.steps < max_tokens
    assert after.tokens - before.tokens < N * max_tokens
    # and nothing runs on: the step counter stands still from here on
    for _ in range(5):
        time.sleep(0.1)
        assert engine(srv).steps == after.steps
    return after


def test_stream_disconnect_stops_the_decoder_and_frees_kv(openai_client, triton_server, sized):
    srv = triton_server
    max_tokens, bound, natural = sized
    idle_kv = settle(srv).kv_used
    before = engine(srv)
    stream = openai_client.chat.completions.create(
        model=MODEL, messages=PROMPT, max_tokens=max_tokens, stream=True, **LONG
    )
    chunks = 0
    for chunk in stream:
        chunks += sum(1 for c in chunk.choices if c.delta.content)
        if chunks >= 4 * N:
            break
    running = engine(srv)
    assert running.running == N and running.kv_used > idle_kv  # it holds blocks now
    t0 = time.perf_counter()
    stream.close()  # the client goes away mid-stream
    after = _check_cancelled(srv, before, idle_kv, max_tokens, bound, "stream")
    seen = chunks // N  # engine steps whose tokens the client had read
    print(
        f"\n[openai] stream disconnect: engine idle {time.perf_counter() - t0:.2f}s after the "
        f"close (bound {bound:.1f}s, natural run {natural:.1f}s); the request ran "
        f"{after.steps - before.steps:.0f} of {max_tokens} steps, the client had read {seen}; "
        f"kv blocks {running.kv_used:.0f} -> {after.kv_used:.0f}"
    )


def test_non_streamed_disconnect_stops_the_decoder(openai_server, triton_server, sized):
    """A client that gives up on a non-streamed request (its timeout) cancels it too."""
    srv = triton_server
    max_tokens, bound, natural = sized
    idle_kv = settle(srv).kv_used
    before = engine(srv)
    impatient = openai.OpenAI(
        base_url=openai_server.base_url, api_key=API_KEY, max_retries=0, timeout=min(2.0, bound)
    )
    with pytest.raises(openai.APITimeoutError):
        impatient.chat.completions.create(
            model=MODEL, messages=PROMPT, max_tokens=max_tokens, **LONG
        )
    impatient.close()
    _check_cancelled(srv, before, idle_kv, max_tokens, bound, "non-streamed")
    assert "the client disconnected; its decoder request is cancelled" in openai_server.log()


def test_64_concurrent_streams(openai_server, openai_client, triton_server):
    """64 streamed chat completions at once; each is exactly its prompt's text alone."""
    prompts = [f"第{i}个问题：你好吗？" for i in range(8)]
    alone = {
        p: openai_client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": p}],
            max_tokens=24,
            temperature=0,
        )
        .choices[0]
        .message.content
        for p in prompts
    }
    before = settle(triton_server)

    def one(i: int) -> tuple[str, str, int]:
        client = openai.OpenAI(
            base_url=openai_server.base_url, api_key=API_KEY, max_retries=0, timeout=300
        )
        p = prompts[i % len(prompts)]
        text, usage = "", None
        stream = client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": p}],
            max_tokens=24,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
        for chunk in stream:
            text += "".join(c.delta.content or "" for c in chunk.choices)
            usage = chunk.usage or usage
        client.close()
        return p, text, usage.completion_tokens

    with ThreadPoolExecutor(64) as pool:
        results = list(pool.map(one, range(64)))
    assert len(results) == 64
    for p, text, tokens in results:
        assert text == alone[p]
        assert 0 < tokens <= 24
    after = settle(triton_server)
    assert after.ok - before.ok == 64 and after.cancelled == before.cancelled
    assert after.kv_used == before.kv_used
