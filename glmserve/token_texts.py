"""The text of every token id, for the engine's stop strings (``token_bytes.bin``).

The engine matches stop strings on the generated text without a tokenizer: the
converter writes, next to ``model.safetensors``, the bytes each id decodes to under
:class:`glmserve.tokenizer.ChatGLMTokenizer`'s rules (backend_src/engine/token_texts.h
reads them):

- kind 0, text: the piece with "▁" as a space and whole-piece markers as the
  whitespace they stand for ("<n>" -> "\\n", "<|tab|>" -> "\\t", "<|blank_N|>" -> N
  spaces);
- kind 4, text that begins with "▁": the same, and the first text piece of a
  generation loses that space (the engine applies the rule, as sentencepiece does);
- kind 1, skip: special ids (control pieces, <pad>): no text;
- kind 2, byte: a byte-fallback piece's one byte;
- kind 3, unknown: <unk>'s surface text.

File format (little-endian): ``b"GLMTOKB1"``, uint32 count, then per id: uint8 kind,
uint32 length, the bytes.
"""

from __future__ import annotations

import argparse
import struct
from pathlib import Path

from glmserve.tokenizer import TOKEN_SKIP, TOKEN_SPACE_TEXT, ChatGLMTokenizer

FILE_NAME = "token_bytes.bin"
MAGIC = b"GLMTOKB1"


def encode_table(table: list[tuple[int, bytes]]) -> bytes:
    parts = [MAGIC, struct.pack("<I", len(table))]
    for kind, data in table:
        parts.append(struct.pack("<BI", kind, len(data)))
        parts.append(data)
    return b"".join(parts)


def decode_table(data: bytes) -> list[tuple[int, bytes]]:
    """The table of a token_bytes.bin file's contents (ValueError when malformed)."""
    if data[:8] != MAGIC or len(data) < 12:
        raise ValueError("not a token table (no GLMTOKB1 header)")
    (count,) = struct.unpack_from("<I", data, 8)
    at, table = 12, []
    for i in range(count):
        if at + 5 > len(data):
            raise ValueError(f"truncated at id {i}")
        kind, length = struct.unpack_from("<BI", data, at)
        at += 5
        table.append((kind, data[at : at + length]))
        at += length
    if at != len(data):
        raise ValueError(f"{len(data) - at} trailing bytes")
    return table


def write_token_texts(tokenizer_file: str | Path, out_dir: str | Path) -> Path:
    """Writes ``out_dir/token_bytes.bin`` for the sentencepiece model ``tokenizer_file``."""
    tok = ChatGLMTokenizer(tokenizer_file)
    out = Path(out_dir) / FILE_NAME
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_bytes(encode_table(tok.token_texts()))
    tmp.replace(out)
    return out


def render(table: list[tuple[int, bytes]], ids: list[int]) -> bytes:
    """The generated text of ``ids`` as the engine computes it (for tests and tools)."""
    out, started = bytearray(), False
    for i in ids:
        kind, data = table[i] if 0 <= i < len(table) else (TOKEN_SKIP, b"")
        if kind == TOKEN_SKIP:
            continue
        if not started and kind == TOKEN_SPACE_TEXT:
            data = data[1:]
        started = True
        out += data
    return bytes(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Write token_bytes.bin (the engine's token texts).")
    ap.add_argument("--tokenizer", required=True, help="the sentencepiece model (ice_text.model)")
    ap.add_argument("--out", required=True, help="the converted checkpoint directory")
    args = ap.parse_args(argv)
    print(f"wrote {write_token_texts(args.tokenizer, args.out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
