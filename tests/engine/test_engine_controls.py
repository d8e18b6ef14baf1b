"""Generation controls in the C++ engine (CPU back-end, tiny demo model), each against an
oracle that does not come from the engine: the tokenizer's decode for the token texts and
stop strings, glmserve.reference's fp32 logits for log-probabilities and penalties, and
single-choice runs for the n choices.

Covers: token_bytes.bin agrees with the tokenizer on every id; stop strings (across ids,
inside a multi-byte character split over byte pieces), stop ids, include_stop_str_in_output,
the streaming hold-back; logprobs; presence/frequency penalties (OpenAI's formula in plain
Python); n choices sharing the prompt's KV blocks; finish reasons and token counts; bad input.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from helpers.controls import Run, byte_char_sample, first_stop, openai_penalized_greedy, run
from helpers.engine_util import engine_module, tiny_dir

from glmserve import token_texts
from glmserve.tokenizer import TOKEN_BYTE, TOKEN_SKIP, ChatGLMTokenizer


@pytest.fixture(scope="module")
def _engine():
    return engine_module()


@pytest.fixture(scope="module")
def tok() -> ChatGLMTokenizer:
    return ChatGLMTokenizer(str(tiny_dir() / "ice_text.model"))


@pytest.fixture(scope="module")
def reference():
    from glmserve.reference import ChatGLMModel

    torch.set_num_threads(1)
    return ChatGLMModel.from_pretrained(tiny_dir())


@pytest.fixture(scope="module")
def eng(_engine):
    return _engine.Engine(str(tiny_dir()), num_threads=2, num_kv_blocks=256, block_size=16)


def prompt_of(tok: ChatGLMTokenizer, text: str) -> list[int]:
    return tok.encode(text)


def text_of(tok: ChatGLMTokenizer, ids: list[int], trim: int = 0) -> str:
    data = tok.decode(ids).encode("utf-8")
    return data[: len(data) - trim].decode("utf-8")


# ------------------------------------------------------------------ token texts


def test_token_texts_agree_with_the_tokenizer_on_every_id(_engine, tok) -> None:
    """The engine's text of each id (token_bytes.bin as the C++ engine reads it) is what
    the tokenizer decodes it to; byte pieces are their one byte."""
    d = str(tiny_dir())
    table = tok.token_texts()
    assert len(table) == tok.vocab_size
    for i, (kind, data) in enumerate(table):
        got = _engine.render_token_texts(d, [i])
        if kind == TOKEN_BYTE:
            assert len(got) == 1 and got == data, i
        elif kind == TOKEN_SKIP:
            assert got == b"" and tok.decode([i]) == "", i
        else:
            assert got == tok.decode([i]).encode("utf-8"), (i, tok.id_to_piece(i))


@pytest.mark.parametrize(
    "text",
    ["你好，世界", "Hello  world\n\tagain", "emoji 😀🎉 and 龘", "   leading blanks", "a\n\nb"],
)
def test_token_texts_agree_on_whole_sequences(_engine, tok, text) -> None:
    """Sequences with byte fallback, blanks, tabs and newlines: the engine's text equals
    the decode (and the Python model of it in glmserve.token_texts)."""
    ids = tok.encode(text, add_special_tokens=False)
    want = tok.decode(ids).encode("utf-8")
    assert _engine.render_token_texts(str(tiny_dir()), ids) == want
    assert token_texts.render(tok.token_texts(), ids) == want


def test_token_table_file_round_trips(tmp_path, tok) -> None:
    path = token_texts.write_token_texts(tiny_dir() / "ice_text.model", tmp_path)
    assert token_texts.decode_table(path.read_bytes()) == tok.token_texts()
    with pytest.raises(ValueError, match="GLMTOKB1"):
        token_texts.decode_table(b"nope")


# ------------------------------------------------------------------ stops

PROMPT = "介绍一下北京"


@pytest.fixture(scope="module")
def greedy(eng, tok):
    """The greedy continuation of PROMPT, long enough to cut stops from."""
    ids = prompt_of(tok, PROMPT)
    r = run(eng, ids, max_tokens=48, ignore_eos=True)
    out = r.ids()
    assert len(out) == 48
    return ids, out


def _spanning_stop(tok, out: list[int]) -> tuple[str, int]:
    """A stop string made of the end of one id's text and the start of the next one's,
    and the index of the id that completes it."""
    for k in range(3, len(out) - 1):
        a, b = tok.decode(out[: k + 1]), tok.decode(out[: k + 2])
        prev = tok.decode(out[:k])
        if len(a) - len(prev) >= 2 and len(b) - len(a) >= 2 and a.startswith(prev):
            stop = a[-1] + b[len(a) : len(a) + 1]
            if stop not in b[: len(a) - 1] and stop.strip():
                return stop, k + 1
    pytest.skip("no id pair with two-character texts in the greedy output")


def test_stop_string_across_ids(eng, tok, greedy) -> None:
    ids, out = greedy
    stop, k = _spanning_stop(tok, out)
    full = tok.decode(out)
    r = run(eng, ids, max_tokens=48, ignore_eos=True, stop=[stop])
    last = r.last()
    assert last["reason"] == "stop"
    assert r.ids() == out[: k + 1]  # ends in the step that completed the stop
    assert text_of(tok, r.ids(), last["trim_bytes"]) == full[: full.index(stop)]
    assert last["completion_tokens"] == k + 1 and last["prompt_tokens"] == len(ids)


def test_include_stop_str_in_output(eng, tok, greedy) -> None:
    ids, out = greedy
    stop, k = _spanning_stop(tok, out)
    full = tok.decode(out)
    r = run(eng, ids, max_tokens=48, ignore_eos=True, stop=[stop], include_stop_str_in_output=True)
    last = r.last()
    assert r.ids() == out[: k + 1]
    assert text_of(tok, r.ids(), last["trim_bytes"]) == full[: full.index(stop) + len(stop)]


def test_earliest_of_several_stops_wins(eng, tok, greedy) -> None:
    ids, out = greedy
    full = tok.decode(out)
    stops = [full[30:33], full[10:12], "never-said-xyz"]
    assert first_stop(full, stops) <= 10
    r = run(eng, ids, max_tokens=48, ignore_eos=True, stop=stops)
    assert text_of(tok, r.ids(), r.last()["trim_bytes"]) == full[: first_stop(full, stops)]


def test_stream_never_releases_a_stop_prefix(eng, tok, greedy) -> None:
    """Hold-back: the text released before the final event is always a prefix of the
    final text (the stop string and what follows never leak, not even partly)."""
    ids, out = greedy
    stop, _ = _spanning_stop(tok, out)
    r = run(eng, ids, max_tokens=48, ignore_eos=True, stop=[stop])
    final = text_of(tok, r.ids(), r.last()["trim_bytes"])
    released: list[int] = []
    for ev in r.events[:-1]:
        released += ev["new_tokens"]
        assert final.startswith(tok.decode(released)), (tok.decode(released), final)
    # And something was held back at least once: the stop's first character came out
    # with the id that completed it, not before.
    assert len(released) < len(r.ids())


def test_stop_token_ids(eng, tok, greedy) -> None:
    ids, out = greedy
    k = next(i for i in range(5, len(out)) if tok.decode([out[i]]).strip())
    r = run(eng, ids, max_tokens=48, ignore_eos=True, stop_token_ids=[out[k]])
    first = out.index(out[k])
    assert r.ids() == out[: first + 1] and r.last()["reason"] == "stop"
    assert text_of(tok, r.ids(), r.last()["trim_bytes"]) == tok.decode(out[:first])
    kept = run(
        eng, ids, max_tokens=48, ignore_eos=True, stop_token_ids=[out[k]],
        include_stop_str_in_output=True,
    )  # fmt: skip
    assert kept.last()["trim_bytes"] == 0 and kept.ids() == r.ids()


def test_stop_string_ending_inside_a_character_split_over_byte_pieces(eng, tok) -> None:
    """The stop's last character comes from two byte pieces: the stop completes on the
    second of them, and the text ends before the stop."""
    ids = prompt_of(tok, "写一首诗")
    seed, out, k, ch = byte_char_sample(eng, tok, ids)
    full = tok.decode(out)
    stop = tok.decode(out[:k])[-1] + ch
    assert stop in full
    r = run(eng, ids, max_tokens=400, temperature=50.0, seed=seed, ignore_eos=True, stop=[stop])
    assert r.last()["reason"] == "stop"
    assert text_of(tok, r.ids(), r.last()["trim_bytes"]) == full[: full.index(stop)]
    assert r.ids() == out[: len(r.ids())] and len(r.ids()) <= k + 2


# ------------------------------------------------------------------ logprobs


def test_logprobs_equal_log_softmax_of_the_reference(eng, tok, reference) -> None:
    """Each token's log-probability and its top-5 alternatives equal log_softmax of
    glmserve.reference's fp32 logits (within 1e-4); greedy, so the top id is the token."""
    from glmserve.reference import chunked_logits

    ids = prompt_of(tok, PROMPT)
    r = run(eng, ids, max_tokens=12, ignore_eos=True, logprobs=5)
    out = r.ids()
    lps = [lp for e in r.choice(0) for lp in e["logprobs"]]
    assert len(lps) == len(out) == 12
    logits = chunked_logits(reference, [ids, out[:-1]]).double()
    ref = torch.log_softmax(logits[len(ids) - 1 :], dim=-1)
    for t, (tok_id, lp) in enumerate(zip(out, lps, strict=True)):
        assert abs(lp["logprob"] - float(ref[t, tok_id])) < 1e-4
        top = torch.topk(ref[t], 5)
        assert lp["top_ids"] == top.indices.tolist()
        np.testing.assert_allclose(lp["top_logprobs"], top.values.numpy(), atol=1e-4)
        assert lp["top_ids"][0] == tok_id


def test_logprobs_0_gives_the_token_only_and_off_gives_none(eng, tok) -> None:
    ids = prompt_of(tok, PROMPT)
    r = run(eng, ids, max_tokens=4, logprobs=0)
    assert all(lp["top_ids"] == [] for e in r.events for lp in e["logprobs"])
    assert sum(len(e["logprobs"]) for e in r.events) == len(r.ids())
    assert all(e["logprobs"] == [] for e in run(eng, ids, max_tokens=4).events)


# ------------------------------------------------------------------ penalties


@pytest.mark.parametrize(
    "presence, frequency", [(1.5, 0.0), (0.0, 1.0), (0.7, 0.6), (-1.0, 0.0)], ids=str
)
def test_presence_and_frequency_penalties_follow_openais_formula(
    eng, tok, reference, presence, frequency
) -> None:
    ids = prompt_of(tok, "重复一下：你好你好你好")
    want = openai_penalized_greedy(reference, ids, 16, presence, frequency)
    got = run(
        eng, ids, max_tokens=16, ignore_eos=True, presence_penalty=presence,
        frequency_penalty=frequency,
    ).ids()  # fmt: skip
    assert got == want
    if presence > 0 or frequency > 0:  # the penalty has an effect here
        assert got != run(eng, ids, max_tokens=16, ignore_eos=True).ids()


# ------------------------------------------------------------------ n choices


def test_n_choices_share_the_prompt_blocks_and_replay_from_their_seeds(_engine, tok) -> None:
    """n=4: one prefill, the prompt's full blocks held once (block counts), each choice
    equal to a single request with seed + i."""
    eng = _engine.Engine(str(tiny_dir()), num_threads=2, num_kv_blocks=128, block_size=16)
    ids = prompt_of(tok, "你好，" * 20)  # a prompt of several full blocks
    c = len(ids) - 1
    assert c // 16 >= 2
    r = Run()
    eng.submit(1, ids, r, max_tokens=8, temperature=1.0, seed=40, n=4, ignore_eos=True)
    eng.step()  # the prefill of choice 0; the other choices fork from it
    eng.step()  # every choice has fed <sop> or its first token
    used = eng.stats()["kv_blocks_used"]
    own = -(-(len(ids) + 1) // 16) - c // 16  # blocks each choice needs beyond the shared ones
    assert used == c // 16 + 4 * own, (used, c // 16, own)
    while eng.step():
        pass
    assert eng.stats()["kv_blocks_used"] == 0
    for i in range(4):
        alone = run(eng, ids, max_tokens=8, temperature=1.0, seed=40 + i, ignore_eos=True)
        assert r.ids(i) == alone.ids(), i
        assert r.last(i)["completion_tokens"] == 8 and r.last(i)["reason"] == "length"
    assert len({tuple(r.ids(i)) for i in range(4)}) > 1
    assert sum(e["finished"] for e in r.events) == 1 and r.events[-1]["finished"]


def test_n_choices_cancelled_while_waiting_end_once(_engine, tok) -> None:
    eng = _engine.Engine(str(tiny_dir()), num_threads=1, num_kv_blocks=64)
    r = Run()
    eng.submit(5, prompt_of(tok, "hi"), r, max_tokens=8, temperature=1.0, n=3)
    eng.cancel(5)
    while eng.step():
        pass
    assert len(r.events) == 1 and r.events[0]["finished"] and r.events[0]["reason"] == "cancelled"
    assert eng.stats()["kv_blocks_used"] == 0


# ------------------------------------------------------------------ reasons and counts


def test_finish_reasons_and_counts(eng, tok, greedy) -> None:
    ids, out = greedy
    r = run(eng, ids, max_tokens=5, ignore_eos=True)
    assert r.last()["reason"] == "length" and r.last()["completion_tokens"] == 5
    assert all(e["prompt_tokens"] == len(ids) for e in r.events)


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"n": 2}, "n > 1 needs sampling"),
        ({"n": 17, "temperature": 1.0}, "n must be in [1, 16]"),
        ({"n": 0}, "n must be in [1, 16]"),
        ({"logprobs": 21}, "logprobs must be in [-1, 20]"),
        ({"logprobs": -2}, "logprobs must be in [-1, 20]"),
        ({"presence_penalty": 2.5}, "presence_penalty must be in [-2, 2]"),
        ({"frequency_penalty": -3.0}, "frequency_penalty must be in [-2, 2]"),
        ({"frequency_penalty": math.nan}, "frequency_penalty must be in [-2, 2]"),
        ({"stop": ["x"] * 17}, "stop: at most 16 values are allowed, got 17"),
        ({"stop": ["y" * 257]}, "stop: a value is over the limit of 256 bytes"),
        ({"stop_token_ids": [10**6]}, "stop_token_ids must be in [0, "),
        ({"stop_token_ids": [-1]}, "stop_token_ids must be in [0, "),
        ({"stop_token_ids": list(range(65))}, "stop_token_ids: at most 64 values"),
    ],
)
def test_bad_controls_are_refused_naming_the_field(_engine, eng, tok, kwargs, words) -> None:
    with pytest.raises(_engine.EngineError) as e:
        eng.submit(77, prompt_of(tok, "hi"), None, max_tokens=4, **kwargs)
    assert words in str(e.value)
    assert e.value.code == "invalid_argument" and e.value.field == next(iter(kwargs))
    assert eng.stats()["waiting"] == 0


def test_stop_strings_need_the_token_table(_engine, tmp_path, tok) -> None:
    import shutil

    d = tmp_path / "no_table"
    shutil.copytree(tiny_dir(), d, ignore=shutil.ignore_patterns("token_bytes.bin", "hub"))
    e = _engine.Engine(str(d), num_threads=1, num_kv_blocks=16)
    with pytest.raises(_engine.EngineError, match="token_bytes.bin") as info:
        e.submit(1, prompt_of(tok, "hi"), None, max_tokens=4, stop=["x"])
    assert info.value.field == "stop"
    e.submit(2, prompt_of(tok, "hi"), None, max_tokens=4, stop_token_ids=[5])  # ids need no table
    while e.step():
        pass


def test_unknown_sampling_keyword_is_a_type_error(eng, tok) -> None:
    with pytest.raises(TypeError, match="unknown sampling argument 'temprature'"):
        eng.submit(78, prompt_of(tok, "hi"), None, temprature=1.0)
