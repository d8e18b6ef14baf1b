"""Tokenizer tests on the tiny tokenizer (trained once per module), plus THUDM's golden
encodings when the real ice_text.model is available."""

from __future__ import annotations

import hashlib
import json
import os
import random
from pathlib import Path

import pytest
import sentencepiece as spm

from glmserve.tokenizer import (
    DECODE_CONTEXT,
    SPECIAL_PIECES,
    ChatGLMTokenizer,
    StreamDecoder,
    postprocess,
    preprocess,
    train_tiny_tokenizer,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
GOLDEN_DIR = REPO_ROOT.parent / "shared" / "golden"
GOLDEN_CASES = GOLDEN_DIR / "tokenizer_cases.json"

ROUND_TRIP_TEXTS = [
    "你好",
    "你好👋！我是人工智能助手 ChatGLM-6B，很高兴见到你，欢迎问我任何问题。",
    "晚上睡不着应该怎么办",
    "The quick brown fox jumps over the lazy dog.",
    "def main():\n    print('hello world')\t# greeting\n\n\treturn  0\n",
    "x" + " " * 85 + "y" + " " * 81 + "z  \t\t  w",
    "  leading and trailing spaces  ",
    " single leading space",
    "emoji 🚀🎉👍🏽 and rare 龘 CJK, 한국어, ελληνικά",
    "\n\nstarts with newlines",
]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_tiny_tokenizer(tmp_path_factory.mktemp("tok") / "ice_text.model")


@pytest.fixture(scope="module")
def tok(tiny_model: Path) -> ChatGLMTokenizer:
    return ChatGLMTokenizer(tiny_model)


def char_ids(tok: ChatGLMTokenizer, text: str) -> list[int]:
    """Ids spelling ``text`` one character per piece (byte pieces where needed)."""
    ids: list[int] = []
    for ch in text:
        i = tok.sp.piece_to_id(ch)
        if i == tok.sp.unk_id() or tok.sp.id_to_piece(i) != ch:
            ids += [tok.sp.piece_to_id(f"<0x{b:02X}>") for b in ch.encode("utf-8")]
        else:
            ids.append(i)
    return ids


def byte_id(tok: ChatGLMTokenizer, b: int) -> int:
    return tok.sp.piece_to_id(f"<0x{b:02X}>")


# -- training ---------------------------------------------------------------------------


def test_training_is_deterministic_and_laid_out_like_ice_text(
    tiny_model: Path, tmp_path: Path
) -> None:
    again = train_tiny_tokenizer(tmp_path / "again.model")
    assert again.read_bytes() == tiny_model.read_bytes()
    sp = spm.SentencePieceProcessor(model_file=str(tiny_model))
    n = sp.get_piece_size()
    assert n == 1024
    assert [sp.id_to_piece(i) for i in range(5)] == ["<unk>", "<s>", "</s>", "<pad>", "<n>"]
    first_special = n - 344
    assert [sp.id_to_piece(first_special + k) for k in range(8)] == list(SPECIAL_PIECES)
    assert all(sp.is_control(first_special + k) for k in range(8))
    assert sp.id_to_piece(first_special + 8) == "<|tab|>"
    assert sp.id_to_piece(first_special + 9) == "<|blank_2|>"
    assert sp.id_to_piece(first_special + 87) == "<|blank_80|>"
    assert sp.id_to_piece(n - 256) == "<0x00>" and sp.is_byte(n - 256)
    assert sp.id_to_piece(n - 1) == "<0xFF>"


def test_training_other_vocab_size(tmp_path: Path) -> None:
    tok = ChatGLMTokenizer(train_tiny_tokenizer(tmp_path / "v.model", vocab_size=900, seed=1))
    assert tok.vocab_size == 900
    assert tok.decode(tok.encode("你好, world")) == "你好, world"
    with pytest.raises(ValueError, match="vocab_size"):
        train_tiny_tokenizer(tmp_path / "w.model", vocab_size=350)


# -- ids and encoding -------------------------------------------------------------------


def test_special_ids(tok: ChatGLMTokenizer) -> None:
    sp = tok.sp
    assert sp.id_to_piece(tok.mask_token_id) == "[MASK]"
    assert sp.id_to_piece(tok.gmask_token_id) == "[gMASK]"
    assert sp.id_to_piece(tok.bos_token_id) == "<sop>"
    assert sp.id_to_piece(tok.eos_token_id) == "<eop>"
    assert sp.id_to_piece(tok.pad_token_id) == "<pad>"
    assert tok.pad_token_id == 3
    assert tok.vocab_size == sp.get_piece_size()
    specials = set(tok.special_ids())
    for i in (tok.mask_token_id, tok.gmask_token_id, tok.bos_token_id, tok.eos_token_id, 3):
        assert i in specials


def test_missing_model_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not found"):
        ChatGLMTokenizer(tmp_path / "nope.model")


def test_preprocess_longest_blank_first() -> None:
    assert preprocess("a\tb\nc") == "a<|tab|>b<n>c"
    assert preprocess("a" + " " * 85 + "b") == "a<|blank_80|><|blank_5|>b"
    assert preprocess("a" + " " * 81 + "b") == "a<|blank_80|> b"
    assert preprocess("a b  c   d") == "a b<|blank_2|>c<|blank_3|>d"
    assert postprocess(preprocess("x \t\n" + " " * 200)) == "x \t\n" + " " * 200
    assert (
        postprocess("<|blank_81|><|blank_1|><|blank_02|>") == "<|blank_81|><|blank_1|><|blank_02|>"
    )


def test_encode_appends_gmask_sop(tok: ChatGLMTokenizer) -> None:
    plain = tok.encode("你好", add_special_tokens=False)
    assert tok.encode("你好") == plain + [tok.gmask_token_id, tok.bos_token_id]
    # The dummy-prefix piece is kept, as in THUDM's tokenizer ("你好" -> "▁", ...).
    assert tok.sp.id_to_piece(plain[0]) == "▁"
    assert plain == tok.sp.encode("你好")


def test_encode_uses_whitespace_pieces(tok: ChatGLMTokenizer) -> None:
    pieces = tok.tokenize("a\n\tb    c")
    assert "<n>" in pieces and "<|tab|>" in pieces and "<|blank_4|>" in pieces
    # Special-token text is plain text, never a special id.
    ids = tok.encode("[gMASK]<sop>", add_special_tokens=False)
    assert not set(ids) & set(tok.special_ids())


@pytest.mark.parametrize("text", ROUND_TRIP_TEXTS)
def test_round_trip(tok: ChatGLMTokenizer, text: str) -> None:
    ids = tok.encode(text)
    assert ids[-2:] == [tok.gmask_token_id, tok.bos_token_id]
    assert tok.decode(ids) == text
    assert tok.decode(tok.encode(text, add_special_tokens=False)) == text


def test_marker_text_decodes_as_whitespace(tok: ChatGLMTokenizer) -> None:
    # As in THUDM's tokenizer: marker strings typed in the text come back as whitespace.
    assert tok.decode(tok.encode("a<n>b<|tab|>c<|blank_3|>d")) == "a\nb\tc   d"


def test_emoji_uses_byte_fallback(tok: ChatGLMTokenizer) -> None:
    pieces = tok.tokenize("🚀")
    assert [p for p in pieces if p != "▁"] == ["<0xF0>", "<0x9F>", "<0x9A>", "<0x80>"]


# -- decoding ---------------------------------------------------------------------------


def test_decode_skips_special_and_out_of_range_ids(tok: ChatGLMTokenizer) -> None:
    ids = tok.encode("你好 world", add_special_tokens=False)
    noisy = [tok.gmask_token_id, tok.bos_token_id, *ids, tok.pad_token_id, tok.eos_token_id]
    assert tok.decode(noisy) == "你好 world"
    assert tok.decode(ids + [tok.vocab_size, tok.vocab_size + 500, -1]) == "你好 world"
    assert tok.decode([]) == ""


def test_special_ids_end_markers(tok: ChatGLMTokenizer) -> None:
    ids = char_ids(tok, "a<|blank_1") + [tok.eos_token_id] + char_ids(tok, "2|>b<n>")
    assert tok.decode(ids) == "a<|blank_12|>b\n"


def test_decode_accepts_numpy(tok: ChatGLMTokenizer) -> None:
    np = pytest.importorskip("numpy")
    ids = tok.encode("你好🚀", add_special_tokens=False)
    arr = np.array(ids, dtype=np.int32)
    assert tok.decode(arr) == "你好🚀"
    head = tok.decode_delta(np.array([], dtype=np.int32), arr[:3], final=False)
    assert head + tok.decode_delta(arr[:3], arr[3:], final=True) == "你好🚀"


def test_decode_bytes_like_sentencepiece(tok: ChatGLMTokenizer) -> None:
    emoji = [byte_id(tok, b) for b in "👋".encode()]
    assert tok.decode(emoji) == "👋"
    assert tok.decode(emoji[:3]) == "\ufffd" * 3  # one U+FFFD per byte, as sentencepiece
    assert tok.decode(emoji[:3]) == tok.sp.decode_ids(emoji[:3])
    # A special id ends a byte run (sentencepiece flushes bytes at control pieces).
    split = emoji[:2] + [tok.eos_token_id] + emoji[2:]
    assert tok.decode(split) == tok.sp.decode_ids(split) == "\ufffd" * 4


def _random_ids(rng: random.Random, tok: ChatGLMTokenizer, n: int, specials: bool) -> list[int]:
    skip = set(tok.special_ids())
    byte_ids = [byte_id(tok, b) for b in range(256)]
    text_ids = [i for i in range(tok.vocab_size) if i not in skip]
    utf8 = [byte_id(tok, b) for b in "é中👋𝄞".encode()]
    out: list[int] = []
    while len(out) < n:
        r = rng.random()
        if r < 0.3:
            out.append(rng.choice(byte_ids))
        elif r < 0.45:
            start = rng.randrange(len(utf8))
            out += utf8[start : start + rng.randint(1, 4)]
        elif r < 0.55 and specials:
            out.append(rng.choice(sorted(skip)))
        else:
            out.append(rng.choice(text_ids))
    return out[:n]


def test_decode_matches_sentencepiece_on_random_ids(tok: ChatGLMTokenizer) -> None:
    rng = random.Random(1234)
    for _ in range(400):
        ids = _random_ids(rng, tok, rng.randint(1, 40), specials=False)
        assert tok.decode(ids) == postprocess(tok.sp.decode_ids(ids)), ids


def test_decode_matches_sentencepiece_with_specials(tok: ChatGLMTokenizer) -> None:
    # Same as THUDM's decode while no "<n>"/"<|tab|>"/"<|blank_N|>" is spelled across
    # a special id: leave out pieces with "<" or ">" other than the marker pieces.
    rng = random.Random(99)
    skip = set(tok.special_ids())
    markers = {"<n>", "<|tab|>", *(f"<|blank_{n}|>" for n in range(2, 81))}
    allowed = [
        i
        for i in range(tok.vocab_size)
        if i in skip
        or tok.sp.is_byte(i)
        and i not in (byte_id(tok, 0x3C), byte_id(tok, 0x3E))
        or not ({"<", ">"} & set(tok.sp.id_to_piece(i)))
        or tok.sp.id_to_piece(i) in markers
    ]
    for _ in range(300):
        ids = [rng.choice(allowed) for _ in range(rng.randint(1, 30))]
        assert tok.decode(ids) == postprocess(tok.sp.decode_ids(ids)), ids


# -- streaming --------------------------------------------------------------------------


def stream(tok: ChatGLMTokenizer, ids: list[int], cuts: list[int]) -> list[str]:
    """decode_delta over the chunks ids[cuts[k]:cuts[k+1]], as the decoder sends them."""
    pieces = []
    for k in range(len(cuts) - 1):
        a, b = cuts[k], cuts[k + 1]
        prev = ids[max(0, a - DECODE_CONTEXT) : a]
        pieces.append(tok.decode_delta(prev, ids[a:b], final=k == len(cuts) - 2))
    return pieces


def random_cuts(rng: random.Random, n: int) -> list[int]:
    mode = rng.random()
    if mode < 0.2:
        inner = list(range(1, n))  # one id per chunk
    else:
        inner = sorted(rng.sample(range(1, n + 1), rng.randint(0, n)))
        if rng.random() < 0.3:
            inner.append(n)  # a final chunk without ids
    return [0, *inner, n] if inner[-1:] != [n] else [0, *inner]


def stream_sequences(tok: ChatGLMTokenizer) -> list[list[int]]:
    seqs = [tok.encode(t, add_special_tokens=False) for t in ROUND_TRIP_TEXTS]
    seqs.append(tok.encode("🚀🎉👍🏽龘龘" * 6, add_special_tokens=False))
    # Markers spelled one character per piece, around other text and at the end.
    for marker in ("<n>", "<|tab|>", "<|blank_12|>", "<|blank_80|>", "<|blank_81|>", "<|bl<n>"):
        seqs.append(char_ids(tok, "ab" + marker + "你" + marker + "x<" + marker))
        seqs.append(char_ids(tok, "好🚀" * 3 + marker))
    seqs.append(char_ids(tok, "a<|tab|" + "\U0001f44b"))
    # Special ids first: the first text piece still loses its leading space.
    seqs.append([tok.pad_token_id, tok.gmask_token_id] + tok.encode(" 你好 a", False))
    # A marker interrupted by special ids (more than the context) is not a marker.
    seqs.append(char_ids(tok, "a<|blank_1") + [tok.pad_token_id] * 20 + char_ids(tok, "2|>b"))
    # Starts with continuation bytes (invalid, one U+FFFD each).
    seqs.append([byte_id(tok, 0x9F), byte_id(tok, 0x91)] + char_ids(tok, "🚀x🚀"))
    return seqs


def test_decode_delta_any_split_equals_decode(tok: ChatGLMTokenizer) -> None:
    rng = random.Random(2024)
    seqs = stream_sequences(tok)
    for _ in range(30):
        seqs.append(_random_ids(rng, tok, rng.randint(1, 60), specials=True))
    for ids in seqs:
        full = tok.decode(ids)
        for _ in range(25):
            pieces = stream(tok, ids, random_cuts(rng, len(ids)))
            assert "".join(pieces) == full, (ids, pieces)
            if "\ufffd" not in full:
                assert not any("\ufffd" in p for p in pieces), (ids, pieces)


def test_decode_delta_holds_back_incomplete_characters(tok: ChatGLMTokenizer) -> None:
    ids = tok.encode("好", add_special_tokens=False) + [byte_id(tok, b) for b in "👋".encode()]
    cuts = list(range(len(ids) + 1))
    pieces = stream(tok, ids, cuts)
    assert pieces == ["", "好", "", "", "", "👋"]


def test_decode_delta_holds_back_marker_prefixes(tok: ChatGLMTokenizer) -> None:
    ids = char_ids(tok, "a<|blank_3|>b<n")
    pieces = stream(tok, ids, list(range(len(ids) + 1)))
    assert pieces[0] == "a"
    assert pieces[1:11] == [""] * 10  # "<|blank_3|" may still become a marker
    assert pieces[11] == "   "
    assert pieces[12:15] == ["b", "", "<n"]  # final chunk flushes the unfinished "<n"
    # Not a marker after all: "<|blank_0" is released as soon as the "0" arrives.
    ids = char_ids(tok, "<|blank_0x")
    assert stream(tok, ids, list(range(len(ids) + 1)))[-2:] == ["<|blank_0", "x"]


def test_decode_delta_truncated_bytes_at_final(tok: ChatGLMTokenizer) -> None:
    ids = tok.encode("好", add_special_tokens=False) + [byte_id(tok, 0xF0), byte_id(tok, 0x9F)]
    assert "".join(stream(tok, ids, [0, 2, 3, 4])) == tok.decode(ids) == "好\ufffd\ufffd"
    assert stream(tok, ids, [0, 2, 3, 4])[:2] == ["好", ""]


def test_stream_decoder(tok: ChatGLMTokenizer) -> None:
    text = "def f():\n    return '你好🚀'\n"
    ids = tok.encode(text, add_special_tokens=False)
    dec = StreamDecoder(tok)
    out = "".join(dec.push(ids[k : k + 3]) for k in range(0, len(ids), 3)) + dec.finish()
    assert out == text
    assert dec.finish() == ""
    with pytest.raises(RuntimeError):
        dec.push([1])


# -- chat prompt ------------------------------------------------------------------------


def test_build_prompt() -> None:
    assert ChatGLMTokenizer.build_prompt("你好", None) == "你好"
    assert ChatGLMTokenizer.build_prompt("你好", []) == "你好"
    assert (
        ChatGLMTokenizer.build_prompt("c", [("q0", "a0"), ("q1", "a1")])
        == "[Round 0]\n问：q0\n答：a0\n[Round 1]\n问：q1\n答：a1\n[Round 2]\n问：c\n答："
    )
    # History as it arrives from JSON: lists, not tuples.
    assert ChatGLMTokenizer.build_prompt("c", [["q", "a"]]).startswith("[Round 0]\n问：q\n")
    with pytest.raises(ValueError, match="history"):
        ChatGLMTokenizer.build_prompt("c", [["only question"]])


def test_build_prompt_matches_golden_chat_prompt() -> None:
    if not GOLDEN_CASES.is_file():
        pytest.skip(f"golden cases not present: {GOLDEN_CASES}")
    texts = [c["text"] for c in json.loads(GOLDEN_CASES.read_text(encoding="utf-8"))["cases"]]
    history = [("你好", "你好👋！我是人工智能助手 ChatGLM-6B，很高兴见到你，欢迎问我任何问题。")]
    assert ChatGLMTokenizer.build_prompt("晚上睡不着应该怎么办", history) in texts


# -- the real tokenizer (golden encodings) ----------------------------------------------


def real_tokenizer_or_skip(golden: dict) -> ChatGLMTokenizer:
    env = os.environ.get("GLM_TOKENIZER")
    path = Path(env) if env else REPO_ROOT / "models" / "chatglm-6b" / "ice_text.model"
    source = "GLM_TOKENIZER" if env else "default location"
    if not path.is_file():
        pytest.skip(f"real ice_text.model not present ({source}: {path}); set GLM_TOKENIZER=<file>")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != golden["tokenizer_sha256"]:
        pytest.skip(
            f"sha256 mismatch: {path} is {digest}, golden needs {golden['tokenizer_sha256']}"
        )
    return ChatGLMTokenizer(path)


def test_golden_real_tokenizer() -> None:
    if not GOLDEN_CASES.is_file():
        pytest.skip(f"golden cases not present: {GOLDEN_CASES}")
    golden = json.loads(GOLDEN_CASES.read_text(encoding="utf-8"))
    tok = real_tokenizer_or_skip(golden)
    assert (tok.vocab_size, tok.mask_token_id, tok.gmask_token_id) == (130344, 130000, 130001)
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (130004, 130005, 3)
    rng = random.Random(7)
    for case in golden["cases"]:
        ids = tok.encode(case["text"])
        assert ids == case["ids"], case["text"]
        text = tok.decode(ids)
        assert "\ufffd" not in text
        for _ in range(20):
            body = ids[:-2]
            assert "".join(stream(tok, body, random_cuts(rng, len(body)))) == tok.decode(body)
    code = golden["cases"][2]["text"]  # ASCII only, so NFKC leaves it unchanged
    assert tok.decode(tok.encode(code)) == code
