"""A small parser for Server-Sent Events (the body of Triton's /generate_stream)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator


def iter_sse_data(lines: Iterable[bytes | str]) -> Iterator[str]:
    """Yield the ``data`` of each event in an SSE stream given line by line.

    Follows the event-stream format: ``data:`` lines of one event are joined with
    newlines, one optional space after the colon is dropped, comment lines (``:``)
    and other fields are ignored, a blank line ends an event, and a last event not
    followed by a blank line is still delivered. Lines may end in LF or CRLF.
    """
    data: list[str] = []
    for raw in lines:
        line = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        line = line.rstrip("\r\n")
        if not line:
            if data:
                yield "\n".join(data)
                data = []
            continue
        if line.startswith(":"):
            continue
        field, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if field == "data":
            data.append(value)
    if data:
        yield "\n".join(data)
