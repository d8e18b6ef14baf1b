"""Request shapes of the load tests: what is sent, to which model, and when.

Two targets (the public contract: docs/request_fields.md, model_repository/):

- ``chatglm``, the ensemble: text in, text out. Prompts come from the prompt sets of
  ``load_tests.prompts`` (seed, mixed, chat, a .jsonl file).
- ``chatglm_decoder`` alone: ids in, ids out; what a server without a tokenizer serves
  (e.g. ChatGLM-6B's shapes with random weights). Prompts are random plain ids of the
  same lengths, then [gMASK] <sop> (``IdsSpec``, special ids from the served config).

Arrivals: a Poisson process (``poisson_arrivals``); static batching takes what has
arrived (``next_batch``).
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from load_tests.prompts import Conversation, mixed_set, seed_set

ENSEMBLE = "chatglm"
DECODER = "chatglm_decoder"
TARGETS = (ENSEMBLE, DECODER)

SEED_PROMPT_IDS = 16  # plain ids of a seed-workload decoder prompt, as `make bench` sends


@dataclass
class Request:
    """One request: a text prompt (``chatglm``) or prompt ids (``chatglm_decoder``)."""

    prompt: str | list[int]
    max_tokens: int
    ignore_eos: bool = True
    history: list[list[str]] | None = None
    arrival: float = 0.0  # wall-clock time it is due (0: at once)
    index: int = 0

    @property
    def expected(self) -> int | None:
        """Tokens it must return: ``max_tokens`` with ``ignore_eos``, else unchecked."""
        return self.max_tokens if self.ignore_eos else None


@dataclass(frozen=True)
class IdsSpec:
    """Special ids and vocabulary of the served checkpoint (ChatGLM-6B's by default)."""

    gmask: int = 130001
    bos: int = 130004
    vocab: int = 130528
    special: tuple[int, ...] = (130000, 130001, 130004, 130005, 3)

    @classmethod
    def from_config(cls, path: str | os.PathLike[str] | None) -> IdsSpec:
        """From a checkpoint's config.json (None or "": ChatGLM-6B's ids)."""
        if not path:
            return cls()
        c = json.loads(Path(path).read_text(encoding="utf-8"))
        keys = ("mask_token_id", "gmask_token_id", "bos_token_id", "eos_token_id", "pad_token_id")
        special = tuple(int(c[k]) for k in keys if k in c)
        return cls(int(c["gmask_token_id"]), int(c["bos_token_id"]), int(c["vocab_size"]), special)

    def prompt(self, n: int, rng: random.Random) -> list[int]:
        """n plain ids (no special ones), then [gMASK] <sop>."""
        hi = min(self.vocab, 130000) - 1
        out: list[int] = []
        while len(out) < n:
            x = rng.randint(5, hi)
            if x not in self.special:
                out.append(x)
        return out + [self.gmask, self.bos]


def from_conversations(
    convs: Sequence[Conversation], ids: IdsSpec | None = None, seed: int = 0
) -> list[Request]:
    """One request per conversation (its first turn and history), or with ``ids`` random
    ids of the same prompt lengths (``SEED_PROMPT_IDS`` where the length is unknown)."""
    rng = random.Random(seed)
    out = []
    for i, c in enumerate(convs):
        prompt: str | list[int] = c.turns[0]
        if ids is not None:
            prompt = ids.prompt(c.prompt_tokens or SEED_PROMPT_IDS, rng)
        history = [list(h) for h in c.history] or None
        out.append(Request(prompt, c.max_tokens, c.ignore_eos, history, index=i))
    return out


def seed_requests(ids: IdsSpec | None = None) -> list[Request]:
    """The seed workload: one fixed prompt (16 ids for the decoder), exactly 150 tokens."""
    return from_conversations(seed_set(), ids)


def mixed_requests(n: int, seed: int = 0, ids: IdsSpec | None = None) -> list[Request]:
    """``n`` requests of the mixed set: prompts of 16..1024 tokens (log-uniform), outputs
    of 32..256 (``ignore_eos``)."""
    return from_conversations(mixed_set(n, seed=seed), ids, seed)


def uniform_requests(n: int, seed: int, ids: IdsSpec) -> list[Request]:
    """``n`` decoder requests of uniformly drawn sizes: 16..1024 prompt ids, 32..256 new
    tokens (``ignore_eos``): the comparison workload of the GPU runs in docs/serving_gpu.md."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        length, max_tokens = rng.randint(16, 1024), rng.randint(32, 256)
        out.append(Request(ids.prompt(length, rng), max_tokens, index=i))
    return out


def poisson_arrivals(
    n: int | None, rate: float, start: float, seed: int, until: float | None = None
) -> list[float]:
    """Arrival times of a Poisson process of ``rate`` per second after ``start``: ``n`` of
    them, or (``n`` None) all those before ``until``."""
    rng = random.Random(seed)
    t, out = start, []
    while n is None or len(out) < n:
        t += rng.expovariate(rate)
        if until is not None and t >= until:
            break
        out.append(t)
    return out


def with_arrivals(requests: Sequence[Request], arrivals: Sequence[float]) -> list[Request]:
    """The first ``len(arrivals)`` requests (cycled when there are fewer), due at those times."""
    return [
        replace(requests[i % len(requests)], arrival=a, index=i) for i, a in enumerate(arrivals)
    ]


def next_batch(arrivals: Sequence[float], i: int, now: float, size: int) -> int:
    """Static batching: the batch formed at ``now`` is requests i..j-1, those of the next
    ``size`` that have arrived (``arrivals`` sorted). Returns j (> i when arrivals[i] <= now).
    """
    j = i
    while j < len(arrivals) and j - i < size and arrivals[j] <= now:
        j += 1
    return j
