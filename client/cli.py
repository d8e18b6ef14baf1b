"""Command line: one-shot generation, streaming, and an interactive chat.

Examples::

    python -m client "你好"                        # one-shot, gRPC on 127.0.0.1:8001
    python -m client --stream --max-tokens 64 "Tell me about Triton"
    python -m client --protocol http --url 127.0.0.1:8000 "Hello"
    python -m client --chat                         # interactive; history kept
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any, TextIO

from glmserve import contract

from .api import DEFAULT_PORTS, PROTOCOLS, ChatGLMClient
from .errors import ClientError, ServerUnavailable
from .params import OPTIONAL_INPUTS, Chunk, Completion

EXIT_REJECTED = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3
EXIT_INTERRUPTED = 130

CHAT_HELP = "Chat with ChatGLM. Commands: /clear resets the history, /exit (or Ctrl-D) quits."


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0.0:  # also rejects nan
        raise argparse.ArgumentTypeError(f"must be > 0: {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m client",
        description="Talk to the ChatGLM-6B Triton server (model 'chatglm').",
        epilog=(
            "Exit status: 0 ok, 1 request rejected by the server, 2 bad arguments, "
            "3 server unavailable."
        ),
    )
    p.add_argument("prompt", nargs="?", help="the prompt ('-' reads it from stdin)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--stream", action="store_true", help="print tokens as they arrive")
    mode.add_argument("--chat", action="store_true", help="interactive chat keeping the history")
    p.add_argument(
        "--url",
        help=f"server host:port (default 127.0.0.1:{DEFAULT_PORTS['grpc']} for grpc, "
        f":{DEFAULT_PORTS['http']} for http)",
    )
    p.add_argument("--protocol", choices=PROTOCOLS, default="grpc", help="default: grpc")
    p.add_argument("--model", default="chatglm", help="model name (default: chatglm)")
    p.add_argument(
        "--timeout", type=_positive_float, default=600.0, help="seconds to wait for a response"
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="print the choices, finish reasons, log-probabilities and usage as JSON",
    )
    p.add_argument(
        "--usage", action="store_true", help="print the finish reason and the usage on stderr"
    )
    s = p.add_argument_group("sampling (server defaults when left out: greedy decoding)")
    contract.add_cli_options(s, OPTIONAL_INPUTS, short={"n": "-n"})
    return p


def sampling_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The sampling options given on the command line, keyed by input tensor name."""
    pairs = {name: getattr(args, contract.field(name).alias or name) for name in OPTIONAL_INPUTS}
    return {k: v for k, v in pairs.items() if v is not None}


def completion_json(c: Completion) -> dict[str, Any]:
    return {
        "choices": [
            {"index": ch.index, "text": ch.text, "finish_reason": ch.finish_reason,
             "logprobs": ch.logprobs}
            for ch in c.choices
        ],
        "usage": {"prompt_tokens": c.prompt_tokens, "completion_tokens": c.completion_tokens},
    }  # fmt: skip


def print_choices(out: TextIO, c: Completion) -> None:
    """One choice: its text; several: each under a header with its finish reason."""
    if len(c.choices) == 1:
        out.write(c.choices[0].text + "\n")
        return
    for ch in c.choices:
        out.write(f"--- choice {ch.index} ({ch.finish_reason}) ---\n{ch.text}\n")


def print_usage(err: TextIO, c: Completion) -> None:
    reasons = ", ".join(ch.finish_reason or "?" for ch in c.choices)
    err.write(
        f"finish_reason: {reasons}; usage: prompt_tokens {c.prompt_tokens}, "
        f"completion_tokens {c.completion_tokens}\n"
    )


def list_and_print(out: TextIO, chunks: Any) -> list[Chunk]:
    """Prints a single choice's pieces as they arrive; returns the chunks."""
    seen = []
    for chunk in chunks:
        out.write(chunk.text)
        out.flush()
        seen.append(chunk)
    out.write("\n")
    return seen


def _stream_to(out: TextIO, pieces: Any) -> str:
    text = []
    for piece in pieces:
        out.write(piece)
        out.flush()
        text.append(piece)
    out.write("\n")
    out.flush()
    return "".join(text)


def run_chat(
    client: ChatGLMClient,
    sampling: dict[str, Any],
    read: Callable[[str], str] = input,
    out: TextIO = sys.stdout,
    err: TextIO = sys.stderr,
) -> int:
    """The interactive loop: every turn streams; history is sent as the ``history`` input."""
    history: list[tuple[str, str]] = []
    err.write(CHAT_HELP + "\n")
    while True:
        try:
            query = read("用户: ").strip()
        except EOFError:
            out.write("\n")
            return 0
        if not query:
            continue
        if query in ("/exit", "/quit"):
            return 0
        if query == "/clear":
            history = []
            err.write("(history cleared)\n")
            continue
        out.write("ChatGLM: ")
        out.flush()
        try:
            reply = _stream_to(out, client.stream(query, history=history, **sampling))
        except ServerUnavailable:
            out.write("\n")
            raise
        except ClientError as exc:
            out.write("\n")
            err.write(f"error: request rejected: {exc}\n")
            continue
        history.append((query, reply))


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.chat and args.prompt is not None:
        parser.error("--chat takes no prompt argument (type the questions interactively)")
    if not args.chat and args.prompt is None:
        parser.error("a prompt is required (or use --chat)")
    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    sampling = sampling_from_args(args)
    try:
        with ChatGLMClient(args.url, args.protocol, args.model, args.timeout) as client:
            if args.chat:
                return run_chat(client, sampling)
            if args.json:
                print(
                    json.dumps(
                        completion_json(client.complete(prompt, **sampling)), ensure_ascii=False
                    )
                )
            elif args.stream and sampling.get("n", 1) == 1:
                chunks = list_and_print(sys.stdout, client.stream_chunks(prompt, **sampling))
                if args.usage:
                    print_usage(sys.stderr, Completion.collect(chunks))
            else:
                completion = client.complete(prompt, **sampling)
                print_choices(sys.stdout, completion)
                if args.usage:
                    print_usage(sys.stderr, completion)
        return 0
    except ServerUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except ClientError as exc:
        print(f"error: request rejected: {exc}", file=sys.stderr)
        return EXIT_REJECTED
    except KeyboardInterrupt:
        print("", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return 0
