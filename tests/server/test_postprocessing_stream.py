"""`postprocessing` called directly through tritonserver, streamed the way the decoder streams.

Each request carries what a chatglm_decoder response carries (DESIGN / docs/architecture.md,
"Decoder streaming contract"): output_ids (the new ids: usually one, several when steps
were merged), prev_ids (up to 16 ids generated right before them) and is_final. The id
sequences split multi-byte characters (byte-fallback ids), <n>, blanks, tabs and a marker
spelled piece by piece ("<" "n" ">") across responses. No piece may contain U+FFFD, and the
pieces must concatenate to exactly the reference tokenizer's decode of all the ids; a
non-final response that ends inside a character must hold it back.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from helpers.serving_oracles import reference_tokenizer

pytestmark = pytest.mark.server

PREV = 16  # the decoder's prev_ids window


@pytest.fixture(scope="module")
def tok():
    return reference_tokenizer()


@pytest.fixture(scope="module")
def client(triton_server):
    c = grpcclient.InferenceServerClient(triton_server.grpc_url)
    yield c
    c.close()


def atoms(tok) -> list[list[int]]:
    """Id groups that each decode to whole characters, found from the tiny vocabulary:
    characters only byte-fallback pieces spell (2, 3 and 4 UTF-8 bytes), <n>, a tab,
    blanks, "<n>" spelled by the pieces "<", "n", ">", ordinary pieces, a lone "<"."""
    out: list[list[int]] = []
    for text in ("😀", "龘", "é", "🎉", "你好", "世", "a", "b\tc", "x    y", "1  2"):
        ids = tok.encode(text, add_special_tokens=False)
        if ids and tok.id_to_piece(ids[0]) == "\u2581":  # sentencepiece's leading "▁" alone
            ids = ids[1:]
        out.append(ids)
    byte_spelled = [
        ids for ids in out[:4] if all(tok.id_to_piece(i).startswith("<0x") for i in ids)
    ]
    assert len(byte_spelled) >= 3, "the tiny vocabulary spells no character in byte pieces"
    piece = tok.sp.piece_to_id
    out.append([piece("<n>")])
    out.append([piece("<|blank_4|>")])
    spelled = [piece("<"), piece("n"), piece(">")]
    assert not any(tok.sp.is_unknown(i) for i in spelled)
    out.append(spelled)  # decodes to "\n" only once all three are there
    out.append([piece("<")])  # a marker prefix that never completes
    return out


def id_sequences(tok, n: int = 6, length: int = 60) -> list[list[int]]:
    rng = random.Random(20261207)
    groups = atoms(tok)
    seqs = [[i for g in groups for i in g]]  # each kind once, in order
    for _ in range(n - 1):
        ids: list[int] = []
        while len(ids) < length:
            ids += rng.choice(groups)
        seqs.append(ids)
    return seqs


def chunkings(n: int, rng: random.Random) -> list[list[int]]:
    """Response sizes as the decoder sends them: one id each; steps merged (1-4 ids);
    and the same with an empty final response (a stream that ended after its last id)."""
    ones = [1] * n
    merged: list[int] = []
    while sum(merged) < n:
        merged.append(min(rng.randint(1, 4), n - sum(merged)))
    return [ones, merged, ones + [0], merged + [0]]


def post(client, new: list[int], prev: list[int], final: bool) -> tuple[str, int]:
    inputs = []
    for name, arr in (
        ("output_ids", np.asarray([new], dtype=np.int32).reshape(1, len(new))),
        ("prev_ids", np.asarray([prev], dtype=np.int32).reshape(1, len(prev))),
        ("is_final", np.asarray([[final]], dtype=np.bool_)),
    ):
        t = grpcclient.InferInput(
            name, list(arr.shape), "BOOL" if arr.dtype == np.bool_ else "INT32"
        )
        t.set_data_from_numpy(arr)
        inputs.append(t)
    r = client.infer("postprocessing", inputs)
    text = r.as_numpy("text_output").reshape(-1)[0].decode("utf-8")
    return text, int(r.as_numpy("token_count").reshape(-1)[0])


def stream(client, ids: list[int], sizes: list[int]) -> list[str]:
    pieces, at = [], 0
    for k, size in enumerate(sizes):
        new = ids[at : at + size]
        text, count = post(client, new, ids[max(0, at - PREV) : at], final=k == len(sizes) - 1)
        assert count == len(new)
        pieces.append(text)
        at += size
    assert at == len(ids)
    return pieces


def test_pieces_concatenate_to_decode_without_replacement_chars(client, tok):
    rng = random.Random(7)
    for ids in id_sequences(tok):
        want = tok.decode(ids)
        assert "\ufffd" not in want  # whole characters only: nothing to replace
        for sizes in chunkings(len(ids), rng):
            pieces = stream(client, ids, sizes)
            bad = [p for p in pieces if "\ufffd" in p]
            assert not bad, f"pieces with U+FFFD {bad} (ids {ids}, sizes {sizes})"
            assert "".join(pieces) == want, (ids, sizes, pieces)


def test_partial_character_is_held_back_until_complete(client, tok):
    """A 4-byte character streamed one byte piece per response: the first three responses
    carry no text, the fourth the whole character; "<" "n" ">" come out as one newline."""
    emoji = tok.encode("😀", add_special_tokens=False)[-4:]
    assert all(tok.id_to_piece(i).startswith("<0x") for i in emoji)
    head = tok.encode("你好", add_special_tokens=False)
    ids = head + emoji
    pieces = stream(client, ids, [len(head), 1, 1, 1, 1])
    assert pieces[1:] == ["", "", "", "😀"], pieces
    piece = tok.sp.piece_to_id
    spelled = head + [piece("<"), piece("n"), piece(">"), piece("世")]
    pieces = stream(client, spelled, [len(head), 1, 1, 1, 1])
    assert "".join(pieces[1:]) == "\n世" and pieces[1] == "", pieces
