"""Independent oracles for the serving path (no tests here).

What the server under test is compared with must not be the server's own engine: the
PyTorch reference (`glmserve.reference`) on the same checkpoint, the reference tokenizer,
and `documented_sample`, a from-scratch Python rendering of the sampling semantics that
docs/architecture.md fixes ("Sampling semantics" and "Random numbers"), applied to the
reference's logits. Helpers to measure the server's decoding speed live here too, so that
tests can size their requests from the machine they run on instead of from constants.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Sequence

import numpy as np

from helpers.tritonserver import DEFAULT_CHECKPOINT

_MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15


def uniform01(seed: int, k: int) -> float:
    """The k-th draw of a request with ``seed``: SplitMix64's k-th output, 24 bits in [0, 1)."""
    z = (seed + (k + 1) * _GOLDEN) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    z ^= z >> 31
    return (z >> 40) / 16777216.0


def documented_sample(
    logits: np.ndarray,
    history: Sequence[int],
    *,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    repetition_penalty: float = 1.0,
    seed: int = 0,
    k: int = 0,
) -> int:
    """The next id by the documented order: repetition penalty over the distinct ids of
    prompt + generated -> argmax (lowest id on ties) when temperature is 0 -> logits /
    temperature -> top-k -> top-p (smallest prefix of the descending order whose mass
    reaches top_p, at least one) -> inverse CDF at uniform01(seed, k) over the kept ids in
    descending order (lower id first on ties). ``k`` = ids the request sampled before."""
    lg = np.array(logits, dtype=np.float32).reshape(-1)
    vocab = lg.size
    if repetition_penalty != 1.0:
        pen = np.float32(repetition_penalty)
        for i in sorted(set(int(t) for t in history)):
            if 0 <= i < vocab:
                lg[i] = lg[i] * pen if lg[i] < 0 else lg[i] / pen
    if temperature == 0.0:
        return int(np.argmax(lg))  # first maximum = lowest id
    lg = lg * (np.float32(1.0) / np.float32(temperature))
    order = np.lexsort((np.arange(vocab), -lg))  # descending value, then ascending id
    kept = top_k if 0 < top_k < vocab else vocab
    order = order[:kept]
    mx = lg[order[0]]
    prob = np.exp((lg[order] - mx).astype(np.float64))
    total = float(prob.sum())
    if top_p < 1.0:
        cum = np.cumsum(prob)
        n = int(np.searchsorted(cum, float(np.float32(top_p)) * total, side="left")) + 1
        kept = max(min(n, kept), 1)
        total = float(cum[kept - 1])
    u = uniform01(seed, k)
    cum = np.cumsum(prob[:kept])
    i = int(np.searchsorted(cum, u * total, side="right"))
    return int(order[min(i, kept - 1)])


@functools.lru_cache(maxsize=2)
def reference_model(checkpoint: str = str(DEFAULT_CHECKPOINT)):
    """The PyTorch reference on the checkpoint (fp32, CPU); cached per process."""
    from glmserve.reference import ChatGLMModel

    return ChatGLMModel.from_pretrained(checkpoint)


@functools.lru_cache(maxsize=2)
def reference_tokenizer(checkpoint: str = str(DEFAULT_CHECKPOINT)):
    from glmserve.tokenizer import ChatGLMTokenizer

    return ChatGLMTokenizer(f"{checkpoint}/ice_text.model")


def reference_generate(prompt: Sequence[int], max_tokens: int, **sampling) -> list[int]:
    """The reference's continuation of one prompt (greedy unless ``sampling`` says otherwise;
    stops after <eop>, which it includes, unless ignore_eos=True)."""
    import torch

    from glmserve.reference import generate

    with torch.inference_mode():
        return generate(reference_model(), [list(prompt)], max_tokens, **sampling)[0]


def reference_step_logits(prompt: Sequence[int], generated: Sequence[int]) -> np.ndarray:
    """Teacher-forced reference logits [len(generated), vocab]: row i is what the reference
    predicts for generated[i] after prompt + generated[:i]."""
    from glmserve.reference import chunked_logits

    chunks = [list(prompt)] + ([list(generated[:-1])] if len(generated) > 1 else [])
    out = chunked_logits(reference_model(), chunks).numpy()
    return out[len(prompt) - 1 : len(prompt) - 1 + len(generated)]


def first_difference(a: Sequence[int], b: Sequence[int]) -> int | None:
    """Index of the first position where a and b differ (a length mismatch counts), or None."""
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def decode_rate(generate_ids, prompt: Sequence[int], tokens: int = 128, tries: int = 2) -> float:
    """Tokens per second of one short streamed request (ignore_eos), the best of ``tries``.

    ``generate_ids(prompt, max_tokens)`` runs one request. The short request's rate is the
    fastest this server decodes (later positions are slower: attention grows), so
    ``n / rate`` is a lower bound on how long an n-token request lasts."""
    best = 0.0
    for _ in range(tries):
        t0 = time.monotonic()
        ids = generate_ids(prompt, tokens)
        dt = time.monotonic() - t0
        assert len(ids) == tokens, f"rate probe got {len(ids)} of {tokens} ids"
        best = max(best, tokens / max(dt, 1e-6))
    return best


def ceil_div(a: float, b: float) -> int:
    return int(math.ceil(a / b))


# ------------------------------------------------------------------------------ engine counters

ENGINE_COUNTERS = ("glm_engine_steps_total", "glm_running_sequences", "glm_kv_blocks_used")
# The backend publishes the engine's gauges and step counter at most every 20 ms while it
# streams (and every 100 ms when idle); a scrape can lag the engine by that much.
METRICS_LAG_S = 0.1


def server_decode_rate(srv, tokens: int = 128) -> float:
    """Tokens/s of a short greedy request to chatglm_decoder on ``srv`` (see decode_rate)."""
    from helpers.reliability import generate_ids, prompt_ids

    def run(prompt, n):
        ids, err = generate_ids(srv.grpc_url, prompt, max_tokens=n, ignore_eos=True, stream=True)
        assert err is None, err
        return ids

    return decode_rate(run, prompt_ids(3), tokens)


def engine_snapshot(srv) -> dict[str, float]:
    """One scrape: the engine's counters and the decoder's request outcomes."""
    from helpers.tritonserver import parse_metrics

    out: dict[str, float] = {}
    for name, labels, value in parse_metrics(srv.metrics_text()):
        if name == "glm_requests_total":
            name = f"glm_requests_total:{labels.get('outcome')}"
        elif not name.startswith("glm_") or name.startswith("glm_time_to_first_token"):
            continue
        out[name] = out.get(name, 0.0) + value
    return out


def engine_settled(srv, quiet: float = 0.5, timeout: float = 120.0) -> dict[str, float]:
    """The snapshot once the engine's counters have not moved for ``quiet`` seconds and
    nothing is running; bounded by ``timeout`` (a hang fails)."""
    deadline = time.monotonic() + timeout
    last, since = None, time.monotonic()
    while time.monotonic() < deadline:
        snap = engine_snapshot(srv)
        key = tuple(snap.get(k) for k in ENGINE_COUNTERS)
        if key != last:
            last, since = key, time.monotonic()
        elif time.monotonic() - since >= quiet and snap["glm_running_sequences"] == 0:
            return snap
        time.sleep(0.02)
    raise TimeoutError(f"the engine did not settle within {timeout}s: {last}")


def wait_outcome(srv, outcome: str, count: float, timeout: float = 60.0) -> dict[str, float]:
    """The first snapshot whose glm_requests_total{outcome} reaches ``count``: the backend
    counts a request right after it finished it (for a cancellation or a timeout: after it
    asked the engine to stop it), so the engine's counters in that scrape are where the
    engine was then, give or take METRICS_LAG_S."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        snap = engine_snapshot(srv)
        if snap.get(f"glm_requests_total:{outcome}", 0.0) >= count:
            return snap
        time.sleep(0.005)
    raise TimeoutError(f"glm_requests_total{{outcome={outcome!r}}} did not reach {count}")


def step_tolerance(rate: float) -> int:
    """Engine steps a scrape may lag behind (METRICS_LAG_S at ``rate`` steps/s) plus the
    step in flight and the one that reaps the cancelled sequence."""
    return 2 + ceil_div(rate * METRICS_LAG_S, 1)


def assert_engine_stopped(at: dict, end: dict, start: dict, steps_left: int, rate: float) -> None:
    """After the backend ended a request early (``at``: the scrape that first counted it),
    the engine ran at most a step or two more (``end``: settled), freed every KV block and
    runs nothing. ``steps_left``: steps the engine would still have run had it not been
    stopped (so that a request finishing on its own could not pass)."""
    tol = step_tolerance(rate)
    if steps_left < 2 * tol:
        import pytest

        pytest.skip(
            f"inconclusive: only {steps_left} steps were left when the request was stopped, "
            f"at {rate:.0f} tokens/s a scrape may lag {tol} steps (this machine is too fast "
            "for a request within the context to outlast the check)"
        )
    more = end["glm_engine_steps_total"] - at["glm_engine_steps_total"]
    assert more <= tol, (
        f"the engine ran {more:.0f} steps after the backend stopped the request "
        f"(allowed {tol} at {rate:.0f} tokens/s; {steps_left} were left): not cancelled in the engine"
    )
    assert end["glm_running_sequences"] == 0 and end["glm_kv_blocks_used"] == 0, end
    assert end["glm_kv_blocks_used"] == start["glm_kv_blocks_used"] == 0
