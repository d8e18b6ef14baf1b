"""Helpers of the generation-controls tests (engine, server and GPU levels): collecting one
request's engine events, and oracles that do not come from the engine."""

from __future__ import annotations

import threading

import pytest

from glmserve.tokenizer import TOKEN_BYTE


class Run:
    """Every event of one request, collected through the callback."""

    def __init__(self) -> None:
        self.events: list[dict] = []
        self.lock = threading.Lock()

    def __call__(self, ev: dict) -> None:
        with self.lock:
            assert not (self.events and self.events[-1]["finished"]), "event after the final one"
            self.events.append(ev)

    def choice(self, i: int = 0) -> list[dict]:
        return [e for e in self.events if e["choice"] == i]

    def ids(self, i: int = 0) -> list[int]:
        return [t for e in self.choice(i) for t in e["new_tokens"]]

    def last(self, i: int = 0) -> dict:
        evs = self.choice(i)
        assert evs and evs[-1]["choice_finished"]
        return evs[-1]


_next_id = [1000]


def run(eng, ids: list[int], **sampling) -> Run:
    r = Run()
    _next_id[0] += 1
    eng.submit(_next_id[0], ids, r, **sampling)
    while eng.step():
        pass
    assert r.events and r.events[-1]["finished"]
    return r


def first_stop(text: str, stops: list[str]) -> int:
    """Where the text ends under OpenAI's stop semantics: at the start of the stop string
    whose first occurrence completes first (of those completing together, the longest)."""
    found = [(text.index(s) + len(s), -len(s), text.index(s)) for s in stops if s in text]
    return min(found)[2] if found else len(text)


def byte_char_sample(eng, tok, ids, max_tokens: int = 400):
    """A seeded, nearly uniform sample (temperature 50) whose ids k, k+1 are byte pieces
    that spell one two-byte character: (seed, ids, k, the character)."""
    table = tok.token_texts()
    for seed in range(40):
        r = run(eng, ids, max_tokens=max_tokens, temperature=50.0, seed=seed, ignore_eos=True)
        out = r.ids()
        for k in range(len(out) - 1):
            a, b = out[k], out[k + 1]
            if not (0 <= a < len(table) and 0 <= b < len(table)):
                continue
            if table[a][0] == table[b][0] == TOKEN_BYTE:
                try:
                    ch = (table[a][1] + table[b][1]).decode("utf-8")
                except UnicodeDecodeError:
                    continue
                before = tok.decode(out[:k])
                if len(ch) == 1 and ch not in before and before and "\ufffd" not in before[-1]:
                    return seed, out, k, ch
    pytest.skip("no two-byte character spelled by byte pieces in 40 samples")


def openai_penalized_greedy(reference, ids, n, presence, frequency) -> list[int]:
    """OpenAI's formula in plain Python on the reference's logits:
    mu[j] - c[j] * frequency - (c[j] > 0) * presence, c = counts in the generated ids."""
    from glmserve.reference import chunked_logits

    out: list[int] = []
    for _ in range(n):
        row = chunked_logits(reference, [ids, out] if out else [ids])[-1].tolist()
        counts: dict[int, int] = {}
        for t in out:
            counts[t] = counts.get(t, 0) + 1
        for j, c in counts.items():
            row[j] = row[j] - c * frequency - (1.0 if c > 0 else 0.0) * presence
        best = max(range(len(row)), key=lambda j: (row[j], -j))
        out.append(best)
    return out
