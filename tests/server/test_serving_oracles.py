"""Through the real tritonserver, compared with oracles that are not the engine under test.

The other server tests mostly prove consistency (streamed vs non-streamed, the server vs
the same C++ engine). Here every expectation comes from elsewhere:

- greedy output of `chatglm` (text) and `chatglm_decoder` (ids), over gRPC and HTTP,
  equals the PyTorch reference (`glmserve.reference`) on the same tiny checkpoint;
- a request with history equals the decoder fed the reference tokenizer's
  `build_prompt` ids, and the reference's continuation of them;
- sampling parameters have their effect: top_k=1 and a top_p below the top token's
  probability (computed with the reference) give the greedy text with temperature > 0,
  while the same seed without them does not; a large repetition_penalty at temperature 0
  moves each id exactly as `glmserve.sampling` says on the reference's logits;
- sampled ids equal `documented_sample` (docs/architecture.md's sampling order and
  counter-based draws, in Python) on the reference's logits, and the same seed gives the
  same ids through the server and through `chatglm-generate --engine cpu`.
"""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest
import requests
import torch
from helpers.reliability import generate_ids, run_stream, text_tensors
from helpers.serving_oracles import (
    documented_sample,
    first_difference,
    reference_generate,
    reference_step_logits,
    reference_tokenizer,
)
from helpers.tritonserver import DEFAULT_CHECKPOINT, venv_dir

from glmserve.sampling import SamplingParams, make_generator, sample_next

pytestmark = pytest.mark.server

CLOSE = {"Connection": "close"}  # an idle keep-alive connection delays Triton's shutdown
PROMPTS = ["你好", "What is the capital of China?", "写一首诗"]
N = 40  # new tokens per request
SAMPLED = {"temperature": 1.0, "top_k": 50, "top_p": 0.9, "repetition_penalty": 1.1}


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """The tiny reference runs fastest single-threaded on a shared machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tok():
    return reference_tokenizer()


# ------------------------------------------------------------------------------ clients


def grpc_ensemble(url: str, text: str, history: str | None = None, **params) -> tuple[str, int]:
    """(text, sum of token_count) of one `chatglm` request over the gRPC stream."""
    tensors = text_tensors(text, history, **params)
    texts, err = run_stream(url, "chatglm", tensors)
    assert err is None, err
    counts, err = run_stream(url, "chatglm", tensors, output="token_count")
    assert err is None, err
    text_out = "".join(v.reshape(-1)[0].decode("utf-8") for v in texts)
    return text_out, int(sum(int(c.reshape(-1)[0]) for c in counts))


def http_ensemble(url: str, text: str, history: str | None = None, **params) -> tuple[str, int]:
    """(text, token_count) of one `chatglm` request over HTTP /generate (non-streamed)."""
    body = {"text_input": text, **params}
    if history is not None:
        body["history"] = history
    r = requests.post(
        f"http://{url}/v2/models/chatglm/generate", json=body, timeout=120, headers=CLOSE
    )
    assert r.status_code == 200, r.text
    return r.json()["text_output"], int(r.json()["token_count"])


def grpc_decoder(url: str, ids, **params) -> list[int]:
    out, err = generate_ids(url, ids, **params)
    assert err is None, err
    return out


def http_decoder(url: str, ids, **params) -> list[int]:
    body = {"input_ids": list(ids), **params}
    r = requests.post(
        f"http://{url}/v2/models/chatglm_decoder/generate", json=body, timeout=120, headers=CLOSE
    )
    assert r.status_code == 200, r.text
    out = r.json()["output_ids"]  # one id comes back as a JSON number, more as a list
    return out if isinstance(out, list) else [out]


def server_ids(srv, protocol: str, ids, **params) -> list[int]:
    fn = grpc_decoder if protocol == "grpc" else http_decoder
    return fn(srv.grpc_url if protocol == "grpc" else srv.http_url, ids, **params)


def server_text(srv, protocol: str, text: str, **params) -> tuple[str, int]:
    if protocol == "grpc":
        return grpc_ensemble(srv.grpc_url, text, stream=True, **params)
    return http_ensemble(srv.http_url, text, **params)


# ------------------------------------------------------------------------------ greedy


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_greedy_ids_equal_the_reference(triton_server, tok, protocol):
    """chatglm_decoder's greedy ids (gRPC stream / HTTP /generate) are the reference's."""
    for prompt in PROMPTS:
        ids = tok.encode(prompt)
        want = reference_generate(ids, N)
        got = server_ids(triton_server, protocol, ids, max_tokens=N)
        assert got == want, f"{prompt!r}: first difference at {first_difference(got, want)}"


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_greedy_text_equals_the_reference(triton_server, tok, protocol):
    """chatglm's greedy text is the reference tokenizer's decode of the reference's ids,
    and its token_count is the number of those ids (gRPC streamed, HTTP non-streamed)."""
    for prompt in PROMPTS:
        want = reference_generate(tok.encode(prompt), N)
        text, count = server_text(triton_server, protocol, prompt, max_tokens=N)
        assert text == tok.decode(want), prompt
        assert count == len(want), prompt


# ------------------------------------------------------------------------------ history


def test_history_reaches_the_prompt(triton_server, tok):
    """The ensemble with a history generates what the decoder generates from the reference
    tokenizer's build_prompt ids, which is the reference's continuation; without the
    history the text differs (so the comparison can fail)."""
    history = [
        ["你好", "你好！有什么可以帮你？"],
        ["What is AI?", "AI is artificial intelligence."],
    ]
    query = "写一首诗"
    ids = tok.encode(tok.build_prompt(query, [tuple(h) for h in history]))
    want = reference_generate(ids, N)
    assert grpc_decoder(triton_server.grpc_url, ids, max_tokens=N) == want
    hist = json.dumps(history, ensure_ascii=False)
    for protocol in ("grpc", "http"):
        text, count = server_text(triton_server, protocol, query, history=hist, max_tokens=N)
        assert (text, count) == (tok.decode(want), len(want)), protocol
    alone = reference_generate(tok.encode(query), N)
    assert tok.decode(alone) != tok.decode(want), "history does not change this prompt's text"


# ------------------------------------------------------------------------------ sampling knobs


def _greedy_with_margin(tok, prompt: str, temperature: float):
    """The reference's greedy ids for prompt and the smallest probability (at temperature)
    of the chosen id along them: a top_p below it keeps only the greedy id at every step."""
    ids = tok.encode(prompt)
    greedy = reference_generate(ids, N, ignore_eos=True)
    logits = torch.from_numpy(reference_step_logits(ids, greedy)) / temperature
    p_top = torch.softmax(logits, dim=-1).max(dim=-1).values
    return ids, greedy, float(p_top.min())


@pytest.mark.parametrize("via", ["chatglm", "chatglm_decoder"])
def test_top_k_1_and_small_top_p_are_greedy(triton_server, tok, via):
    """With temperature > 0 and a seed, top_k=1 gives the greedy text, and so does a top_p
    below the top token's probability at every step (from the reference's logits); the same
    seed and temperature without them sample something else."""
    temperature, seed = 1.0, 11
    prompt = PROMPTS[0]
    ids, greedy, p_min = _greedy_with_margin(tok, prompt, temperature)
    top_p = p_min / 2
    base = {"max_tokens": N, "ignore_eos": True, "temperature": temperature, "random_seed": seed}

    def run(**extra) -> list[int] | str:
        if via == "chatglm_decoder":
            return grpc_decoder(triton_server.grpc_url, ids, **base, **extra)
        return grpc_ensemble(triton_server.grpc_url, prompt, stream=True, **base, **extra)[0]

    want = greedy if via == "chatglm_decoder" else tok.decode(greedy)
    assert run(top_k=1) == want, "top_k=1 is not greedy"
    assert run(top_p=top_p) == want, f"top_p={top_p:.3g} (< every top probability) is not greedy"
    assert run() != want, "this seed samples the greedy ids anyway: the test could not fail"


@pytest.mark.parametrize("via", ["chatglm", "chatglm_decoder"])
def test_repetition_penalty_moves_ids_as_the_reference_sampler_says(triton_server, tok, via):
    """temperature 0 with repetition_penalty 5: every id is what glmserve.sampling chooses
    from the reference's logits of the same prefix, and the text is not the plain greedy one."""
    prompt = PROMPTS[1]
    ids = tok.encode(prompt)
    params = {"max_tokens": N, "ignore_eos": True, "repetition_penalty": 5.0}
    if via == "chatglm_decoder":
        got = grpc_decoder(triton_server.grpc_url, ids, **params)
    else:
        got = reference_generate(ids, N, repetition_penalty=5.0, ignore_eos=True)
        text, _ = grpc_ensemble(triton_server.grpc_url, prompt, stream=True, **params)
        assert text == tok.decode(got), "the ensemble's text is not the reference's"
    logits = torch.from_numpy(reference_step_logits(ids, got))
    sp = SamplingParams(repetition_penalty=5.0)
    gen = make_generator(0)
    want = [sample_next(logits[i], ids + got[:i], sp, gen) for i in range(len(got))]
    assert got == want, f"first difference at {first_difference(got, want)}"
    assert got != reference_generate(ids, N, ignore_eos=True), "the penalty changed nothing"


# ------------------------------------------------------------------------------ seeded draws


def test_sampled_ids_follow_the_documented_sampler(triton_server, tok):
    """Sampled ids (temperature, top_k, top_p, repetition penalty, seed) through the decoder
    equal a Python rendering of the documented sampler on the reference's logits, draw by
    draw; so do two other settings that exercise one knob each."""
    settings = [
        dict(SAMPLED, random_seed=7),
        {"temperature": 0.7, "random_seed": 3},
        {"temperature": 1.3, "top_p": 0.8, "random_seed": 5},
        {"temperature": 0.9, "top_k": 5, "random_seed": 9},
        # A penalty on a flat distribution (temperature 8): the repeated ids with negative
        # logits (multiplied, not divided, by the penalty) carry real probability mass.
        {"temperature": 8.0, "repetition_penalty": 3.0, "random_seed": 13},
    ]
    for i, s in enumerate(settings):
        ids = tok.encode(PROMPTS[i % len(PROMPTS)] if i < 4 else PROMPTS[2])
        got = grpc_decoder(triton_server.grpc_url, ids, max_tokens=N, ignore_eos=True, **s)
        logits = reference_step_logits(ids, got)
        kw = {k: v for k, v in s.items() if k != "random_seed"}
        want = [
            documented_sample(logits[j], ids + got[:j], seed=s["random_seed"], k=j, **kw)
            for j in range(len(got))
        ]
        assert got == want, f"{s}: first difference at {first_difference(got, want)}"


def cli_ids(prompt_ids: list[int], max_tokens: int, seed: int, **sampling) -> list[int]:
    cmd = [
        str(venv_dir() / "bin" / "chatglm-generate"),
        "--checkpoint",
        str(DEFAULT_CHECKPOINT),
        "--engine",
        "cpu",
        "--input-ids",
        ",".join(map(str, prompt_ids)),
        "--max-tokens",
        str(max_tokens),
        "--seed",
        str(seed),
        "--ignore-eos",
        "--json",
    ]
    for k, v in sampling.items():
        cmd += ["--" + k.replace("_", "-"), str(v)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=300)
    return json.loads(out.stdout)["output_ids"][0]


def test_same_seed_through_the_server_and_the_cli(triton_server, tok):
    """The same seed and sampling settings give the same ids through chatglm_decoder, the
    same text through chatglm (gRPC and HTTP), and the same ids from
    `chatglm-generate --engine cpu --seed`; another seed gives other ids."""
    prompt = PROMPTS[2]
    ids = tok.encode(prompt)
    seed = 1234
    want = cli_ids(ids, N, seed, **SAMPLED)
    params = {"max_tokens": N, "ignore_eos": True, "random_seed": seed, **SAMPLED}
    assert grpc_decoder(triton_server.grpc_url, ids, **params) == want
    assert http_decoder(triton_server.http_url, ids, **params) == want
    for protocol in ("grpc", "http"):
        text, count = server_text(triton_server, protocol, prompt, **params)
        assert (text, count) == (tok.decode(want), N), protocol
    other = grpc_decoder(triton_server.grpc_url, ids, **{**params, "random_seed": seed + 1})
    assert other != want


def test_documented_sampler_reference_points():
    """The Python sampler itself, on hand-made logits (so a wrong oracle cannot pass)."""
    logits = np.array([1.0, 3.0, 2.0, 3.0, -1.0], dtype=np.float32)
    assert documented_sample(logits, []) == 1  # greedy: lowest id among the tied maxima
    # penalty 4: id 1 (positive) is divided -> 0.75; id 4 (negative) multiplied -> -4.
    assert documented_sample(logits, [1, 1, 4], repetition_penalty=4.0) == 3
    # top_k=1 and a tiny top_p keep only the first id of the descending order (1 before 3).
    for kw in ({"top_k": 1}, {"top_p": 0.01}):
        assert {
            documented_sample(logits, [], temperature=1.0, seed=s, **kw) for s in range(50)
        } == {1}
    # Without them the draws cover the support in proportion.
    draws = [documented_sample(logits, [], temperature=1.0, seed=s) for s in range(400)]
    assert set(draws) == {0, 1, 2, 3, 4}
    assert draws.count(1) + draws.count(3) > draws.count(0) + draws.count(4)
