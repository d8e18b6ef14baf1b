"""Prompt sets of the load tests: ``seed``, ``mixed`` and ``chat``.

- ``seed``: one fixed prompt; every request generates exactly 150 tokens
  (``max_tokens=150``, ``ignore_eos=true``, greedy).
- ``mixed``: prompt lengths 16..1024 tokens (log-uniform), outputs 32..256 tokens
  (uniform, ``ignore_eos=true``), half Chinese, half English; deterministic from a seed.
- ``chat``: multi-turn conversations; each turn sends the earlier turns (with the
  answers the server actually gave) as ``history``.

Prompt lengths are counted with the ChatGLM tokenizer when ``GLM_TOKENIZER`` names
its ``ice_text.model``, otherwise estimated (see ``estimate_tokens``).
A set may also be a JSON-lines file: one object per line with ``prompt`` and
optional ``max_tokens``, ``ignore_eos``, ``history``, ``turns`` (a list of follow-up
questions, making it a conversation).

``python -m load_tests.prompts --set mixed`` prints a set as JSON lines.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

SET_NAMES = ("seed", "mixed", "chat")

SEED_PROMPT = "请详细介绍一下大型语言模型的工作原理，以及它们在实际应用中面临的主要挑战。"
SEED_MAX_TOKENS = 150


@dataclass
class Conversation:
    """One or more turns; a single-turn conversation is a plain request."""

    turns: list[str]
    max_tokens: int
    ignore_eos: bool
    history: list[list[str]] = field(default_factory=list)
    prompt_tokens: int = 0  # of the first turn (measured or estimated)
    lang: str = ""


EN_SENTENCES = [
    "The inference server keeps many requests in flight and batches them step by step.",
    "A paged key-value cache stores attention state in fixed-size blocks.",
    "Streaming responses let a user read the first words while the rest is computed.",
    "Memory bandwidth, not arithmetic, limits how fast a large model decodes one token.",
    "The river winds through the valley and the old mill still turns in spring.",
    "Every evening the baker sets aside bread for the neighbours who work late.",
    "Researchers measured the time to first token and the gap between tokens.",
    "A good benchmark states the hardware, the software versions and the workload.",
    "The library opens at nine, and the reading room fills up before ten.",
    "Compilers translate source code into instructions that a processor can run.",
    "Rain fell all night, and by morning the streets shone like polished glass.",
    "Batching requests together raises throughput but can add waiting time.",
    "The committee approved the budget after a long debate about priorities.",
    "Small models are useful for testing the plumbing of a serving system.",
    "She wrote the results in a notebook and plotted them the next morning.",
    "Quantization stores weights with fewer bits to save memory and bandwidth.",
]
ZH_SENTENCES = [
    "推理服务器同时处理许多请求，并在每一步把它们合并成一个批次。",
    "分页的键值缓存把注意力状态存放在固定大小的块中。",
    "流式输出让用户在模型继续计算时就能读到第一个字。",
    "大模型逐字生成的速度主要受显存带宽限制，而不是算力。",
    "春天的早晨，河边的柳树发出了新芽，空气里满是泥土的味道。",
    "研究人员记录了首字延迟和相邻两个字之间的间隔时间。",
    "一个好的基准测试要写清楚硬件、软件版本和工作负载。",
    "图书馆九点开门，不到十点阅览室就已经坐满了人。",
    "编译器把源代码翻译成处理器能够执行的指令。",
    "下了一夜的雨，清晨的街道像擦亮的玻璃一样闪着光。",
    "把请求合并成批次可以提高吞吐量，但也可能增加等待时间。",
    "量化用更少的比特存储权重，从而节省显存和带宽。",
    "他把实验结果写在笔记本上，第二天早上画成了图表。",
    "小模型很适合用来测试服务系统的各个环节是否连通。",
]
EN_TASKS = [
    "Summarize the text above in a few sentences.",
    "What is the main idea of the passage above?",
    "Continue the story above.",
    "Write three questions about the text above.",
]
ZH_TASKS = [
    "请用几句话总结上面的内容。",
    "上面这段话的主要意思是什么？",
    "请接着上面的内容继续写下去。",
    "请根据上面的内容提出三个问题。",
]
CHAT_SCRIPTS = [
    ["你好", "你能做什么？", "请给我讲一个关于太空旅行的小故事。", "给这个故事起一个标题。"],
    ["Hello! Who are you?", "What is a GPU good for?", "Explain it to a ten-year-old."],
    ["晚上睡不着应该怎么办", "还有其他方法吗？", "请把这些建议总结成三条。"],
    [
        "Give me a recipe for pancakes.",
        "How can I make them without eggs?",
        "Thanks! Any toppings?",
    ],
    ["什么是机器学习？", "它和深度学习有什么区别？", "举一个生活中的例子。"],
]


def _is_cjk(ch: str) -> bool:
    return "\u3400" <= ch <= "\u9fff" or "\uf900" <= ch <= "\ufaff"


def estimate_tokens(text: str) -> int:
    """Approximate ChatGLM-6B token count of ``text``.

    The ChatGLM vocabulary holds many multi-character Chinese words (about 1.7
    characters per token in ordinary prose) and most common English words as one
    token (about 1.25 tokens per word with punctuation). The two trailing special
    tokens ([gMASK], <sop>) are not counted.
    """
    cjk = sum(1 for ch in text if _is_cjk(ch))
    other = "".join(" " if _is_cjk(ch) else ch for ch in text)
    words = len(other.split())
    cjk_punct = sum(1 for ch in text if "\u3000" <= ch <= "\u303f" or "\uff00" <= ch <= "\uffef")
    return max(1, round(cjk / 1.7 + words * 1.25 + cjk_punct))


def token_counter() -> tuple[Callable[[str], int], str]:
    """The best available token counter and its name.

    With ``GLM_TOKENIZER`` set to a ChatGLM ``ice_text.model``, prompts are measured
    with the real tokenizer (``glmserve.tokenizer``); otherwise ``estimate_tokens``.
    """
    path = os.environ.get("GLM_TOKENIZER")
    if path:
        from glmserve.tokenizer import ChatGLMTokenizer

        tok = ChatGLMTokenizer(path)

        def count(text: str) -> int:
            return max(1, len(tok.encode(text)) - 2)  # without [gMASK] <sop>

        return count, f"tokenizer {Path(path).name}"
    return estimate_tokens, "estimate"


def _build_text(
    rng: random.Random,
    target: int,
    sentences: Sequence[str],
    task: str,
    count: Callable[[str], int],
    sep: str,
) -> tuple[str, int]:
    """Sentences from the pool until the prompt (with the task) reaches ``target`` tokens."""
    parts: list[str] = []
    text = task
    n = count(text)
    while n < target:
        parts.append(rng.choice(sentences))
        text = sep.join(parts) + "\n" + task
        n = count(text)
    # Trim whole words/characters from the front of the passage until we fit.
    while n > target and parts:
        body = sep.join(parts)
        cut = 1 if sep == "" else len(body.split(" ", 1)[0]) + 1
        body = body[cut:]
        parts = [body] if body else []
        text = (body + "\n" + task) if body else task
        n = count(text)
    return text, n


def seed_set() -> list[Conversation]:
    return [Conversation([SEED_PROMPT], SEED_MAX_TOKENS, True, lang="zh")]


def mixed_set(n: int = 200, seed: int = 0, count: Callable[[str], int] | None = None):
    """``n`` requests: prompts 16..1024 tokens (log-uniform), outputs 32..256."""
    count = count or token_counter()[0]
    rng = random.Random(seed)
    out: list[Conversation] = []
    for i in range(n):
        target = round(16 * (1024 / 16) ** rng.random())
        max_tokens = rng.randint(32, 256)
        if i % 2 == 0:
            text, got = _build_text(rng, target, ZH_SENTENCES, rng.choice(ZH_TASKS), count, "")
            lang = "zh"
        else:
            text, got = _build_text(rng, target, EN_SENTENCES, rng.choice(EN_TASKS), count, " ")
            lang = "en"
        out.append(Conversation([text], max_tokens, True, prompt_tokens=got, lang=lang))
    return out


def chat_set(max_tokens: int = 128) -> list[Conversation]:
    out = []
    for script in CHAT_SCRIPTS:
        lang = "zh" if _is_cjk(script[0][0]) else "en"
        out.append(Conversation(list(script), max_tokens, False, lang=lang))
    return out


def load_jsonl(path: Path) -> list[Conversation]:
    out = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                turns = [str(obj["prompt"]), *[str(t) for t in obj.get("turns", [])]]
                out.append(
                    Conversation(
                        turns,
                        int(obj.get("max_tokens", 128)),
                        bool(obj.get("ignore_eos", False)),
                        history=[[str(q), str(a)] for q, a in obj.get("history", [])],
                    )
                )
            except (ValueError, KeyError, TypeError) as exc:
                raise ValueError(f"{path}:{lineno}: bad prompt line: {exc}") from None
    if not out:
        raise ValueError(f"{path}: no prompts")
    return out


def load_set(name: str) -> list[Conversation]:
    """A prompt set by name (seed, mixed, chat) or from a JSON-lines file."""
    if name == "seed":
        return seed_set()
    if name == "mixed":
        return mixed_set()
    if name == "chat":
        return chat_set()
    path = Path(name)
    if path.is_file():
        return load_jsonl(path)
    raise ValueError(f"unknown prompt set {name!r}: use one of {SET_NAMES} or a .jsonl file")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Print a load-test prompt set as JSON lines.")
    p.add_argument("--set", default="mixed", help="seed, mixed, chat or a .jsonl file")
    p.add_argument("--stats", action="store_true", help="print length statistics instead")
    args = p.parse_args(argv)
    convs = load_set(args.set)
    if args.stats:
        _, how = token_counter()
        lens = [c.prompt_tokens for c in convs]
        outs = [c.max_tokens for c in convs]
        print(f"{len(convs)} conversations; prompt tokens ({how}) min {min(lens)} max {max(lens)}")
        print(f"max_tokens min {min(outs)} max {max(outs)}")
        return 0
    for c in convs:
        sys.stdout.write(json.dumps(asdict(c), ensure_ascii=False) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
