"""ChatGLM-6B's tokenizer on `sentencepiece`, with streaming-safe incremental decoding.

Encoding (as THUDM's `tokenization_chatglm.py` at chatglm-6b revision 8b7d335, with
`num_image_tokens = 0`): the text is preprocessed ("\\n" -> "<n>", "\\t" -> "<|tab|>",
runs of 80 down to 2 spaces -> "<|blank_N|>", longest first), encoded by sentencepiece
as is (the model's dummy-prefix "▁" piece included: "你好" -> ["▁", "你好"]), and
`[gMASK] <sop>` is appended. Special-token strings inside the text (e.g. "[gMASK]")
are encoded as plain text, never as the special ids.

Decoding is sentencepiece's decode followed by the reverse text maps ("<n>" -> "\\n",
"<|tab|>" -> "\\t", "<|blank_N|>" -> N spaces, N in 2..80). It is done piece by piece
here (same result as `SentencePieceProcessor.decode`, which the tests check) so that
it can also run incrementally. Rules:

* Special ids (pieces of CONTROL type such as [MASK], [gMASK], <sop>, <eop>, <s>,
  </s>; the <pad> id) and ids outside ``[0, vocab_size)`` produce no text. They are
  skipped, never an error: the model's embedding table (130528 rows) is larger than
  the tokenizer (130344 pieces), and a sampled padding row must not crash a server.
* Byte-fallback pieces (<0x00>..<0xFF>) are joined into UTF-8; a byte that does not
  start a valid sequence becomes one U+FFFD each (sentencepiece's rule).
* The first text-producing piece loses its leading "▁" (sentencepiece's rule).
* A special id ends a text segment: bytes before it are flushed and "<n>"/"<|tab|>"/
  "<|blank_N|>" are only recognised inside one segment. THUDM's decode differs only
  when a special id sits inside such a marker spelled out over several pieces, which
  the model does not produce; the rule keeps the streaming context bounded.

Streaming contract (`decode_delta`, used by the stateless Triton postprocessing model):
the decoder sends each chunk of new ids together with ``prev_ids``: the last
``min(DECODE_CONTEXT, n)`` ids generated before the chunk (n = how many came before;
more are allowed, fewer only at the start of a sequence). For ANY split of a
generated id sequence into chunks, with ``final=True`` on the last chunk only,

    "".join(decode_delta(prev_j, chunk_j, final_j) for j) == decode(all ids)

Text is held back while it may still change: an incomplete UTF-8 character (the
trailing byte pieces that may still complete; never emitted as U+FFFD, never split,
never duplicated) and a trailing "<" that may still become "<n>", "<|tab|>" or
"<|blank_N|>". Held-back text comes out with a later chunk, or at ``final``.

How: ``decode_delta`` renders ``prev_ids`` and ``prev_ids + new_ids`` from the same
starting point, keeping only the text that no continuation can change, and returns
the difference. Why 16 ids suffice: the held-back tail is at most 11 ids (a marker
prefix, e.g. "<|blank_80|" spelled one character per piece; an incomplete character
is at most 3 byte pieces), and a window that begins inside a character (up to 3
continuation bytes) renders those bytes identically in both renders, so they cancel.
The window is the start of the sequence iff ``len(prev_ids) < 16`` (this decides the
leading-space rule). Known limit: 16 or more special ids in a row directly before
a chunk hide whether text came before them. `decode_delta` is a pure function;
`StreamDecoder` is a small stateful wrapper for clients and CLIs.

The reverse punctuation map of THUDM's ``chat()`` (ASCII ",!:;?" next to CJK ->
full-width) is not part of decoding (THUDM applies it to finished responses only).
"""

from __future__ import annotations

import hashlib
import io
import os
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import sentencepiece as spm

DECODE_CONTEXT = 16
"""Ids of context (`prev_ids`) that the decoder sends with each streamed chunk."""

MAX_BLANK_LENGTH = 80
SPECIAL_PIECES = (
    "[MASK]",
    "[gMASK]",
    "[sMASK]",
    "<unused_0>",
    "<sop>",
    "<eop>",
    "<ENC>",
    "<dBLOCK>",
)
NEWLINE_PIECE = "<n>"
TAB_PIECE = "<|tab|>"
PAD_PIECE = "<pad>"
DATA_DIR = Path(__file__).resolve().parent / "data"
TINY_CORPUS = DATA_DIR / "tiny_corpus.txt"
CORPUS_DOC_SEPARATOR = "===DOC==="


def blank_piece(n: int) -> str:
    """The piece that stands for a run of ``n`` spaces (2 <= n <= 80)."""
    if not 2 <= n <= MAX_BLANK_LENGTH:
        raise ValueError(f"blank runs have 2..{MAX_BLANK_LENGTH} spaces, got {n}")
    return f"<|blank_{n}|>"


# Markers the decoder turns back into whitespace. Every one starts with "<", ends with
# ">" and has neither inside, so occurrences never overlap and replacing them all at
# once equals THUDM's sequential str.replace calls.
_MARKER_TEXT = {NEWLINE_PIECE: "\n", TAB_PIECE: "\t"}
_MARKER_TEXT.update({blank_piece(n): " " * n for n in range(2, MAX_BLANK_LENGTH + 1)})
_MARKER_RE = re.compile("|".join(re.escape(m) for m in sorted(_MARKER_TEXT, key=len, reverse=True)))
_MARKER_PREFIXES = frozenset(m[:k] for m in _MARKER_TEXT for k in range(1, len(m)))
_MAX_MARKER = max(len(m) for m in _MARKER_TEXT)


def preprocess(text: str) -> str:
    """ChatGLM's text preprocessing before sentencepiece: newlines, tabs, space runs."""
    text = text.replace("\n", NEWLINE_PIECE).replace("\t", TAB_PIECE)
    for n in range(MAX_BLANK_LENGTH, 1, -1):
        text = text.replace(" " * n, blank_piece(n))
    return text


def postprocess(text: str) -> str:
    """The reverse text maps applied after sentencepiece decoding."""
    return _MARKER_RE.sub(lambda m: _MARKER_TEXT[m.group(0)], text)


def _marker_holdback(text: str) -> int:
    """Index from which ``text`` must be held back because its tail may still become
    a marker ("<|bla" -> "<|blank_2|>"); ``len(text)`` when nothing is held back."""
    start = text.rfind("<", max(0, len(text) - _MAX_MARKER))
    if start >= 0 and text[start:] in _MARKER_PREFIXES:
        return start
    return len(text)


# ---------------------------------------------------------------------------------------
# UTF-8 exactly as sentencepiece joins byte pieces: greedy, strict (no overlong forms,
# no surrogates, <= U+10FFFF); a byte that does not start a valid sequence is one U+FFFD.


def _utf8_len(data: bytes | bytearray, i: int) -> int:
    """Length of the valid sequence at ``data[i]``; 0 if invalid; -1 if it is a valid
    but incomplete prefix running to the end of ``data``."""
    b = data[i]
    if b < 0x80:
        return 1
    if 0xC2 <= b <= 0xDF:
        n, lo, hi = 2, 0x80, 0xBF
    elif 0xE0 <= b <= 0xEF:
        n = 3
        lo, hi = {0xE0: (0xA0, 0xBF), 0xED: (0x80, 0x9F)}.get(b, (0x80, 0xBF))
    elif 0xF0 <= b <= 0xF4:
        n = 4
        lo, hi = {0xF0: (0x90, 0xBF), 0xF4: (0x80, 0x8F)}.get(b, (0x80, 0xBF))
    else:
        return 0
    for k in range(1, n):
        if i + k >= len(data):
            return -1
        c = data[i + k]
        if not (lo <= c <= hi if k == 1 else 0x80 <= c <= 0xBF):
            return 0
    return n


def _decode_bytes(data: bytes | bytearray, final: bool) -> tuple[str, int]:
    """Decode ``data``; returns (text, number of bytes consumed). Unless ``final``, a
    trailing incomplete-but-valid prefix is left unconsumed (held back)."""
    out: list[str] = []
    i = 0
    while i < len(data):
        n = _utf8_len(data, i)
        if n == -1 and not final:
            break
        if n <= 0:
            out.append("\ufffd")
            i += 1
        else:
            out.append(bytes(data[i : i + n]).decode("utf-8"))
            i += n
    return "".join(out), i


_KIND_TEXT, _KIND_SKIP, _KIND_BYTE, _KIND_UNK = 0, 1, 2, 3
TOKEN_TEXT, TOKEN_SKIP, TOKEN_BYTE, TOKEN_UNKNOWN = _KIND_TEXT, _KIND_SKIP, _KIND_BYTE, _KIND_UNK
TOKEN_SPACE_TEXT = 4  # a text piece that begins with sentencepiece's "▁"


class ChatGLMTokenizer:
    """ChatGLM-6B tokenizer on a sentencepiece model (the real ``ice_text.model`` or
    the tiny one from `train_tiny_tokenizer`). Ids are sentencepiece ids."""

    def __init__(self, model_file: str | Path) -> None:
        path = Path(model_file)
        if not path.is_file():
            raise FileNotFoundError(f"sentencepiece model not found: {path}")
        self.model_file = path
        self.sp = spm.SentencePieceProcessor(model_file=str(path))
        self._vocab_size = int(self.sp.get_piece_size())

        def piece_id(piece: str) -> int:
            i = int(self.sp.piece_to_id(piece))
            if i == self.sp.unk_id() and piece != self.sp.id_to_piece(i):
                raise ValueError(
                    f"{path}: the model has no {piece!r} piece (not a ChatGLM tokenizer?)"
                )
            return i

        self._mask = piece_id("[MASK]")
        self._gmask = piece_id("[gMASK]")
        self._sop = piece_id("<sop>")
        self._eop = piece_id("<eop>")
        self._pad = piece_id(PAD_PIECE)
        piece_id(NEWLINE_PIECE)
        piece_id(TAB_PIECE)
        # Per-id decoding table: kind, text (for _KIND_TEXT; "▁" already turned into
        # " ") and byte value (for _KIND_BYTE).
        kinds: list[int] = []
        texts: list[str] = []
        values: list[int] = []
        for i in range(self._vocab_size):
            piece = self.sp.id_to_piece(i)
            value = 0
            if self.sp.is_control(i) or i == self._pad:
                kind, text = _KIND_SKIP, ""
            elif self.sp.is_unknown(i):
                kind, text = _KIND_UNK, ""
            elif self.sp.is_byte(i):
                kind, text, value = _KIND_BYTE, "", int(piece[3:5], 16)
            else:
                kind, text = _KIND_TEXT, piece.replace("\u2581", " ")
            kinds.append(kind)
            texts.append(text)
            values.append(value)
        self._kinds = kinds
        self._texts = texts
        self._values = values
        unk = self.sp.unk_id()
        self._unk_surface = self.sp.decode_ids([unk]) if 0 <= unk < self._vocab_size else ""

    # -- ids ------------------------------------------------------------------------
    @property
    def mask_token_id(self) -> int:
        return self._mask

    @property
    def gmask_token_id(self) -> int:
        return self._gmask

    @property
    def bos_token_id(self) -> int:
        """<sop>, the start of the answer (ChatGLM's bos)."""
        return self._sop

    @property
    def eos_token_id(self) -> int:
        """<eop>, the end of the answer (ChatGLM's eos)."""
        return self._eop

    @property
    def pad_token_id(self) -> int:
        return self._pad

    @property
    def vocab_size(self) -> int:
        """Number of sentencepiece pieces (130344 for ice_text.model)."""
        return self._vocab_size

    def special_ids(self) -> list[int]:
        """Ids that decode to no text (control pieces and <pad>)."""
        return [i for i, k in enumerate(self._kinds) if k == _KIND_SKIP]

    def id_to_piece(self, i: int) -> str:
        return str(self.sp.id_to_piece(int(i)))

    def token_texts(self) -> list[tuple[int, bytes]]:
        """Per id, what decoding makes of it: (kind, bytes) with kind TOKEN_TEXT (the
        piece's text: "▁" as a space, whole-piece markers such as "<n>" resolved),
        TOKEN_SPACE_TEXT (the same for a piece that begins with "▁": the first text
        piece of a decode loses that space), TOKEN_SKIP (special ids: nothing),
        TOKEN_BYTE (one byte-fallback byte) or TOKEN_UNKNOWN (<unk>'s surface).
        Markers spelled over several pieces are resolved only by :meth:`decode`;
        glmserve.token_texts writes this table for the engine."""
        out: list[tuple[int, bytes]] = []
        for kind, text, value in zip(self._kinds, self._texts, self._values, strict=True):
            if kind == _KIND_BYTE:
                out.append((kind, bytes([value])))
            elif kind == _KIND_UNK:
                out.append((kind, self._unk_surface.encode("utf-8")))
            else:
                space = kind == _KIND_TEXT and text.startswith(" ")
                out.append((TOKEN_SPACE_TEXT if space else kind, postprocess(text).encode("utf-8")))
        return out

    def sha256(self) -> str:
        return hashlib.sha256(self.model_file.read_bytes()).hexdigest()

    # -- encoding ---------------------------------------------------------------------
    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of ``text``; with ``add_special_tokens`` followed by [gMASK] <sop>."""
        ids = [int(i) for i in self.sp.encode(preprocess(text), out_type=int)]
        if add_special_tokens:
            ids += [self._gmask, self._sop]
        return ids

    def tokenize(self, text: str) -> list[str]:
        """The sentencepiece pieces of ``text`` (after preprocessing, no specials)."""
        return [str(p) for p in self.sp.encode(preprocess(text), out_type=str)]

    @staticmethod
    def build_prompt(query: str, history: Sequence[tuple[str, str]] | None = None) -> str:
        """THUDM's chat prompt: the query alone without history, else rounds from 0:
        "[Round i]\\n问：{q}\\n答：{a}\\n" per past turn, then "[Round n]\\n问：{query}\\n答：".
        """
        if not history:
            return query
        for turn in history:
            if len(turn) != 2 or not all(isinstance(x, str) for x in turn):
                raise ValueError(
                    f"history entries must be [question, answer] strings, got {turn!r}"
                )
        parts = [f"[Round {i}]\n问：{q}\n答：{a}\n" for i, (q, a) in enumerate(history)]
        parts.append(f"[Round {len(history)}]\n问：{query}\n答：")
        return "".join(parts)

    # -- decoding ---------------------------------------------------------------------
    def _kind(self, i: int) -> int:
        return self._kinds[i] if 0 <= i < self._vocab_size else _KIND_SKIP

    def _render(self, ids: Sequence[int], at_start: bool, final: bool) -> str:
        """Text of ``ids`` decoded from a piece boundary. Unless ``final``, only the
        text that no continuation can change (incomplete characters and possible
        marker prefixes at the end are left out). ``at_start``: ``ids`` begin the
        sequence (the first text piece then loses its leading space)."""
        out: list[str] = []
        seg: list[str] = []
        buf = bytearray()
        first = at_start
        for raw in ids:
            i = int(raw)
            kind = self._kind(i)
            if kind == _KIND_BYTE:
                buf.append(self._values[i])
                first = False
                continue
            if buf:
                seg.append(_decode_bytes(buf, final=True)[0])
                buf.clear()
            if kind == _KIND_SKIP:
                if seg:
                    out.append(postprocess("".join(seg)))
                    seg = []
                continue
            if kind == _KIND_UNK:
                seg.append(self._unk_surface)
            else:
                text = self._texts[i]
                if first and text.startswith(" "):
                    text = text[1:]
                seg.append(text)
            first = False
        pending = False
        if buf:
            text, used = _decode_bytes(buf, final=final)
            seg.append(text)
            pending = used < len(buf)
        tail = "".join(seg)
        if not final and not pending:
            # An incomplete character always ends any marker prefix before it: it
            # becomes a non-ASCII character or U+FFFD. Otherwise hold back the prefix.
            tail = tail[: _marker_holdback(tail)]
        out.append(postprocess(tail))
        return "".join(out)

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids``; special ids and ids outside [0, vocab_size) are skipped."""
        return self._render(list(ids), at_start=True, final=True)

    def decode_delta(self, prev_ids: Sequence[int], new_ids: Sequence[int], final: bool) -> str:
        """Streaming-safe text for ``new_ids`` given the ids generated before them
        (``prev_ids``: the last ``min(DECODE_CONTEXT, n)`` of them). See the module
        docstring for the contract; pure function of its arguments."""
        prev = [int(i) for i in prev_ids]
        window = prev + [int(i) for i in new_ids]
        m = len(prev)
        # The window begins the sequence when fewer ids than the context came before
        # (the first text piece then loses its leading space). Otherwise decoding starts
        # mid-sequence: continuation bytes of a character begun before the window come
        # out as U+FFFD in both renders below and cancel; from the first non-continuation
        # id on (at most 3 ids in) both renders agree with the whole-sequence decode.
        at_start = m < DECODE_CONTEXT
        before = self._render(prev, at_start, final=False)
        after = self._render(window, at_start, final=final)
        # `before` is always a prefix of `after` (stable text only grows); the common
        # prefix is a defensive measure that never drops or repeats text on its own.
        return after[len(os.path.commonprefix([before, after])) :]

    def stream_decoder(self) -> StreamDecoder:
        return StreamDecoder(self)


class StreamDecoder:
    """Stateful helper on `ChatGLMTokenizer.decode_delta` for clients and CLIs:
    ``push(ids)`` returns the new printable text, ``finish()`` the held-back rest."""

    def __init__(self, tokenizer: ChatGLMTokenizer) -> None:
        self.tokenizer = tokenizer
        self._prev: list[int] = []
        self._pending: list[int] = []
        self._finished = False

    def push(self, ids: Iterable[int]) -> str:
        if self._finished:
            raise RuntimeError("StreamDecoder: push() after finish()")
        new = [int(i) for i in ids]
        if not new:
            return ""
        text = self.tokenizer.decode_delta(self._prev, new, final=False)
        self._prev = (self._prev + new)[-DECODE_CONTEXT:]
        return text

    def finish(self) -> str:
        if self._finished:
            return ""
        self._finished = True
        return self.tokenizer.decode_delta(self._prev, [], final=True)


# ---------------------------------------------------------------------------------------
# The tiny tokenizer of the demo model.

TINY_DEFAULT_VOCAB = 1024
# Pieces appended after the trained ones, in ice_text.model's order: the special
# pieces (CONTROL), <|tab|> and <|blank_2|>..<|blank_80|> (USER_DEFINED), then the 256
# byte-fallback pieces (BYTE). ice_text.model: 130000 trained + 344 = 130344 pieces.
_APPENDED = len(SPECIAL_PIECES) + 1 + (MAX_BLANK_LENGTH - 1) + 256
_TYPE_CONTROL, _TYPE_USER_DEFINED, _TYPE_BYTE = 3, 4, 6


def corpus_documents(corpus: str | Path = TINY_CORPUS) -> list[str]:
    """The documents of a corpus file (separated by lines that read ``===DOC===``)."""
    text = Path(corpus).read_text(encoding="utf-8")
    docs = [d.strip("\n") for d in text.split("\n" + CORPUS_DOC_SEPARATOR + "\n")]
    return [d for d in docs if d.strip()]


def train_tiny_tokenizer(
    out_file: str | Path,
    vocab_size: int = TINY_DEFAULT_VOCAB,
    seed: int = 0,
    corpus: str | Path = TINY_CORPUS,
) -> Path:
    """Train a small deterministic ChatGLM-style sentencepiece model into ``out_file``.

    Unigram model trained on the bundled bilingual corpus (each document preprocessed
    like ChatGLM's input, so "<n>" and blanks appear as in real prompts), laid out like
    ice_text.model: <unk> 0, <s> 1, </s> 2, <pad> 3, <n> 4, the trained pieces, then
    [MASK] [gMASK] [sMASK] <unused_0> <sop> <eop> <ENC> <dBLOCK> (CONTROL), <|tab|>,
    <|blank_2|>..<|blank_80|> (USER_DEFINED) and <0x00>..<0xFF> with byte fallback on,
    so any text (emoji included) encodes. ``vocab_size`` counts every piece. The text
    normalization is the identity (ice_text.model uses NFKC, which maps e.g. "，" to
    ","), so that the tiny tokenizer round-trips any text exactly. Single-threaded,
    corpus in file order: the same arguments give the same bytes. ``seed`` seeds
    sentencepiece's random generator; the unigram trainer with these settings does not
    draw from it, so today every seed gives the same model. Takes well under a second.
    ``vocab_size`` must leave room for the corpus's characters (about 900..1590 for
    the bundled corpus; ValueError with sentencepiece's reason otherwise).
    """
    from sentencepiece import sentencepiece_model_pb2 as model_pb2

    trained = vocab_size - _APPENDED
    if trained < 64:
        raise ValueError(f"vocab_size must be at least {_APPENDED + 64}, got {vocab_size}")
    raw_docs = corpus_documents(corpus)
    docs = [preprocess(d) for d in raw_docs]
    # Cover every character when the vocabulary has room for all of them, else the
    # most frequent ones (about 3/4 of the trained pieces); the rest use byte fallback.
    chars = Counter("".join(raw_docs))
    for ws in " \n\t":
        chars.pop(ws, None)
    counts = sorted(chars.values(), reverse=True)
    keep = min(len(counts), trained * 3 // 4)
    coverage = 1.0 if keep == len(counts) else (sum(counts[:keep]) - 0.5) / sum(counts)
    coverage = max(coverage, 0.98)  # sentencepiece's lower limit
    whitespace = [TAB_PIECE] + [blank_piece(n) for n in range(2, MAX_BLANK_LENGTH + 1)]
    spm.set_random_generator_seed(seed)
    model = io.BytesIO()
    trainer_args = dict(
        sentence_iterator=iter(docs),
        model_writer=model,
        model_type="unigram",
        vocab_size=trained + len(whitespace),
        character_coverage=coverage,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=True,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=3,
        pad_piece=PAD_PIECE,
        # Whitespace markers are atomic while training (no pieces learnt from their
        # spelling); they move behind the trained pieces below, as in ice_text.model.
        user_defined_symbols=[NEWLINE_PIECE, *whitespace],
        byte_fallback=False,
        max_sentence_length=1 << 16,
        input_sentence_size=0,
        shuffle_input_sentence=False,
        num_threads=1,
        minloglevel=2,
    )
    try:
        spm.SentencePieceTrainer.train(**trainer_args)
    except RuntimeError as err:
        raise ValueError(f"cannot train a {vocab_size}-piece tokenizer on {corpus}: {err}") from err
    proto = model_pb2.ModelProto()
    proto.ParseFromString(model.getvalue())
    Piece = model_pb2.ModelProto.SentencePiece
    pieces = list(proto.pieces)
    head = 5  # <unk> <s> </s> <pad> <n>
    moved = pieces[head : head + len(whitespace)]
    if [p.piece for p in pieces[:head]] != ["<unk>", "<s>", "</s>", PAD_PIECE, NEWLINE_PIECE] or [
        p.piece for p in moved
    ] != whitespace:
        raise RuntimeError("unexpected piece layout from the sentencepiece trainer")
    del proto.pieces[:]
    proto.pieces.extend(pieces[:head] + pieces[head + len(whitespace) :])
    for piece in SPECIAL_PIECES:
        proto.pieces.append(Piece(piece=piece, score=0.0, type=_TYPE_CONTROL))
    for piece in whitespace:
        proto.pieces.append(Piece(piece=piece, score=0.0, type=_TYPE_USER_DEFINED))
    for b in range(256):
        proto.pieces.append(Piece(piece=f"<0x{b:02X}>", score=0.0, type=_TYPE_BYTE))
    proto.trainer_spec.byte_fallback = True
    proto.trainer_spec.vocab_size = vocab_size
    out = Path(out_file)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_bytes(proto.SerializeToString(deterministic=True))
    tmp.replace(out)
    return out
