"""Next-token choice for the reference model, built from transformers' logits processors.

Order (docs/architecture.md): repetition penalty over prompt + generated ids ->
greedy argmax when temperature == 0 (lowest id on ties) -> temperature -> top-k ->
top-p -> a draw from the request's own ``torch.Generator``. The processors are
Hugging Face's own, so the semantics are HF's by construction. The draw itself
uses torch's generator, not the engine's counter-based one: seeded runs are
reproducible here, but not token-identical to the engine's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from glmserve import contract


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0

    def __post_init__(self) -> None:
        """Each value against its range in the request contract (a ValueError naming it)."""
        for name in ("temperature", "top_k", "top_p", "repetition_penalty"):
            contract.field(name).check(getattr(self, name))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def processors(self):  # -> tuple[LogitsProcessorList, LogitsProcessorList]
        """(applied before the greedy/sampling split, warpers applied only when sampling)."""
        from transformers import (  # imported here: transformers is slow to import
            LogitsProcessorList,
            RepetitionPenaltyLogitsProcessor,
            TemperatureLogitsWarper,
            TopKLogitsWarper,
            TopPLogitsWarper,
        )

        pre = LogitsProcessorList()
        if self.repetition_penalty != 1.0:
            pre.append(RepetitionPenaltyLogitsProcessor(self.repetition_penalty))
        warp = LogitsProcessorList()
        if not self.greedy:
            if self.temperature != 1.0:
                warp.append(TemperatureLogitsWarper(self.temperature))
            if self.top_k > 0:
                warp.append(TopKLogitsWarper(self.top_k))
            if self.top_p < 1.0:
                warp.append(TopPLogitsWarper(self.top_p))
        return pre, warp


def make_generator(seed: int | None) -> torch.Generator:
    """A CPU generator for one request: ``seed``, or a fresh random seed when None."""
    gen = torch.Generator(device="cpu")
    if seed is None:
        gen.seed()
    else:
        gen.manual_seed(int(seed) & 0xFFFF_FFFF_FFFF_FFFF)
    return gen


def sample_next(
    logits: torch.Tensor, history: list[int], params: SamplingParams, gen: torch.Generator
) -> int:
    """Chooses the next id from one sequence's logits [vocab] given its prompt + generated ids."""
    scores = logits.detach().float().cpu().reshape(1, -1).clone()
    if params.greedy and params.repetition_penalty == 1.0:
        return int(torch.argmax(scores[0]))  # lowest id on ties
    ids = torch.tensor([history], dtype=torch.long)
    pre, warp = params.processors()
    scores = pre(ids, scores)
    if params.greedy:
        return int(torch.argmax(scores[0]))
    scores = warp(ids, scores)
    probs = torch.softmax(scores[0], dim=-1)
    return int(torch.multinomial(probs, 1, generator=gen)[0])
