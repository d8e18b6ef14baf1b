"""Checks of a server's HTTP generate answers, run by the GPU tasks (``scripts/gpu.sh``).

    python -m glmserve.http_checks prompt-ids CONFIG [--first 100] [--count 16]
    python -m glmserve.http_checks same-ids GENERATE_JSON STREAM_TXT [--expect N]
    python -m glmserve.http_checks same-text STREAM_TXT GENERATE_JSON

``prompt-ids`` prints the prompt the tasks send to ``chatglm_decoder`` (plain ids, then
the config's [gMASK] <sop>) as a JSON list. ``same-ids`` compares the ``output_ids`` of one
``/generate`` answer with those of a ``/generate_stream`` (server-sent events) answer;
``same-text`` checks that the streamed ``text_output`` pieces concatenate to the
``/generate`` text. Both exit 1 when the check fails.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def prompt_ids(config: dict[str, Any], first: int = 100, count: int = 16) -> list[int]:
    """`count` ids from `first` on, then the config's [gMASK] and <sop> (bos)."""
    return list(range(first, first + count)) + [config["gmask_token_id"], config["bos_token_id"]]


def sse_events(text: str) -> list[dict[str, Any]]:
    """The JSON objects of the ``data:`` lines of a server-sent events answer."""
    return [json.loads(line[5:]) for line in text.splitlines() if line.startswith("data:")]


def as_list(value: Any) -> list[Any]:
    """A tensor value of an HTTP generate answer as a list (one element comes as a scalar)."""
    return value if isinstance(value, list) else [value]


def compare_ids(
    generate: dict[str, Any], events: list[dict[str, Any]], expect: int | None = None
) -> tuple[bool, str]:
    """Whether the streamed ids equal the ids of one generate answer (and number `expect`)."""
    ids = as_list(generate["output_ids"])
    streamed: list[Any] = []
    for e in events:
        streamed += as_list(e["output_ids"])
    ok = streamed == ids and (expect is None or len(ids) == expect)
    msg = (
        f"generate returned {len(ids)} ids; generate_stream {len(events)} events, "
        f"{len(streamed)} ids; same ids: {ids == streamed}; first ids {ids[:8]}"
    )
    return ok, msg


def compare_text(events: list[dict[str, Any]], generate: dict[str, Any]) -> tuple[bool, str]:
    """Whether the streamed text pieces concatenate to the generate answer's text."""
    pieces = [e["text_output"] for e in events]
    same = "".join(pieces) == generate["text_output"]
    msg = f"streamed pieces: {len(pieces)} | concatenation == /generate text: {same}"
    return bool(pieces) and same, msg


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    pi = sub.add_parser("prompt-ids", help="print the prompt ids as a JSON list")
    pi.add_argument("config", type=Path, help="the served checkpoint's config.json")
    pi.add_argument("--first", type=int, default=100)
    pi.add_argument("--count", type=int, default=16)
    si = sub.add_parser("same-ids", help="generate ids == generate_stream ids")
    si.add_argument("generate", type=Path, help="the /generate answer (JSON)")
    si.add_argument("stream", type=Path, help="the /generate_stream answer (server-sent events)")
    si.add_argument("--expect", type=int, help="the number of ids each answer must carry")
    si.add_argument("--label", default="", help="prefix of the printed line")
    st = sub.add_parser("same-text", help="streamed text pieces concatenate to the generate text")
    st.add_argument("stream", type=Path, help="the /generate_stream answer (server-sent events)")
    st.add_argument("generate", type=Path, help="the /generate answer (JSON)")
    args = p.parse_args(argv)

    if args.cmd == "prompt-ids":
        print(json.dumps(prompt_ids(_read_json(args.config), args.first, args.count)))
        return 0
    if args.cmd == "same-ids":
        events = sse_events(args.stream.read_text(encoding="utf-8"))
        ok, msg = compare_ids(_read_json(args.generate), events, args.expect)
        print(f"{args.label}: {msg}" if args.label else msg)
        return 0 if ok else 1
    events = sse_events(args.stream.read_text(encoding="utf-8"))
    ok, msg = compare_text(events, _read_json(args.generate))
    print(msg)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
