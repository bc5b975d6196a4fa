"""Streamed text is valid UTF-8, always: pvqrun's repair (pvq_utf8_repair), the bindings' TextStream and
Llama's completions turn each maximal invalid subpart into U+FFFD and never split a valid character.
Python's bytes.decode("utf-8", errors="replace") is the independent reference. The token sequences are
invalid on purpose, built from SmolLM2's real byte-level vocabulary, so no seed has to produce them."""
from __future__ import annotations

import codecs
import random

import pytest

from bindings_util import import_pvq
from runtime_clib import Model, lib, run_pvqrun, tiny_gguf

FFFD = "\ufffd"


def reference(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")


def is_utf8(b: bytes) -> bool:
    try:
        b.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def c_stream(pieces) -> list[bytes]:
    """pvqrun's stream loop over pvq_utf8_repair: the chunks it would print, the last from the final flush."""
    ffi, L = lib()
    n_out, chunks, held = ffi.new("size_t *"), [], b""
    for i, piece in enumerate([*pieces, b""]):
        buf = held + piece
        out = ffi.new("char[]", 3 * len(buf) + 1)
        final = i == len(pieces)
        used = L.pvq_utf8_repair(buf, len(buf), int(final), out, n_out)
        assert n_out[0] <= 3 * len(buf)
        chunks.append(ffi.buffer(out, n_out[0])[:])
        held = buf[used:]
        assert len(held) <= 3 and (not final or not held)
    return chunks


# ---- token sequences from the real vocabulary

class Vocab:
    """SmolLM2's token pieces through the C API, and the first token of each piece."""

    def __init__(self, path):
        m = Model(path, n_ctx=16, logits_all=False)
        ffi, L = m.ffi, m.L
        buf = ffi.new("char[]", 256)
        self.pieces = []
        for t in range(m.n_vocab):
            n = L.pvq_token_to_piece(m.m, t, buf, 256, 0)
            self.pieces.append(ffi.buffer(buf, n)[:] if n > 0 else b"")
        self.tokenize = lambda text: m.tokenize(text, add_special=False)
        self.ids = {}
        for t, p in enumerate(self.pieces):
            self.ids.setdefault(p, t)
        # byte-level BPE: the bytes UTF-8 text can hold are tokens of their own (SmolLM2 has no C0, C1, F5..FF)
        self.bytes = [b for b in range(256) if bytes([b]) in self.ids]
        assert all(bytes([b]) in self.ids for b in [*range(0x80, 0xc0), 0xc2, 0xe0, 0xe5, 0xed, 0xf0, 0xf4])
        self.m = m

    def seq(self, *parts) -> list[int]:
        """Token ids: a bytes part is one token with exactly that piece, a str part is tokenized."""
        ids = []
        for p in parts:
            ids += [self.ids[p]] if isinstance(p, bytes) else self.tokenize(p)
        return ids


@pytest.fixture(scope="module")
def vocab(smollm2):
    v = Vocab(smollm2.f16_gguf)
    yield v
    v.m.close()


def hand_cases(v: Vocab) -> list[list[int]]:
    return [
        v.seq("Hi", b"\x80", " there"),                  # a lone continuation byte
        v.seq(b"\xbf", b"\xbf", b"\x80"),                # three of them: three U+FFFD
        v.seq("x", b"\xe5", " the end"),                 # a 3-byte lead, then a token starting with ASCII
        v.seq(b"\xe5", b"\xa5", "x"),                    # two bytes of a 3-byte character, then ASCII: one U+FFFD
        v.seq("ok ", b"\xf0", b"\x9f", b"\x98"),         # a 4-byte character truncated at the end
        v.seq(b"\xf0", b"\x9f", b"\x98", "!"),           # the same in the middle
        v.seq(b"\xed", b"\xa0", b"\x80", "z"),           # a surrogate: ED A0 is never valid, three U+FFFD
        v.seq(b"\xe0", b"\x80", b"\x80"),                # overlong 3-byte form
        v.seq(b"\xf0", b"\x8f", b"\xbf", b"\xbf", "a"),   # overlong 4-byte form
        v.seq(b"\xf4", b"\x90", b"\x80", b"\x80"),       # above U+10FFFF
        v.seq(b"\xc3", b"\xa9", " caf", b"\xc3", b"\xa9"),  # valid: é split over byte tokens
        v.seq(b"\xf0", b"\x9f", b"\xa6", b"\x99", "\n"),  # valid: 🦙 in four tokens
        v.seq("Ünïcödé → 日本語のテキスト, 🦙🧑‍💻 Ελληνικά"),  # valid: the tokenizer's own splits
        v.seq(b"\xe6", "東京", b"\x9d", b"\xb1"),         # a lead before a whole character, a stray tail after
    ]


def vocab_cases(v: Vocab) -> list[list[int]]:
    """The hand-made sequences, and seeded mixtures of the vocabulary's multi-byte tokens that are not UTF-8
    by themselves (pieces of CJK characters and the like), byte tokens and ASCII words."""
    partial = [t for t, p in enumerate(v.pieces) if len(p) > 1 and not is_utf8(p)]
    opening = [t for t in partial if _open(v.pieces[t])[1]]
    trailing = [t for t in partial if 0x80 <= v.pieces[t][0] <= 0xbf]
    assert len(opening) >= 100 and len(trailing) >= 5, "the vocabulary should have partial-character tokens"
    pool = opening + trailing + [v.ids[bytes([b])] for b in v.bytes if b >= 0x80] + v.seq(" the", "a", "\n", "東")
    rng = random.Random(15)
    mixed = [[rng.choice(pool) for _ in range(rng.randrange(1, 7))] for _ in range(400)]
    return hand_cases(v) + mixed


def _open(data: bytes) -> tuple[str, bool]:
    """Python's incremental decoding of data before the end: the text so far, and whether data ends inside a
    character that later bytes could still complete."""
    d = codecs.getincrementaldecoder("utf-8")("replace")
    text = d.decode(data)
    return text, d.getstate()[0] != b""


@pytest.fixture(scope="module")
def cases(vocab) -> list[list[bytes]]:
    return [[vocab.pieces[t] for t in ids] for ids in vocab_cases(vocab)]


def test_the_cases_are_invalid_on_purpose(cases):
    data = [b"".join(pieces) for pieces in cases]
    assert sum(not is_utf8(d) for d in data) > 300
    assert sum(_open(d)[1] for d in data) > 50  # an unfinished character at the end
    # valid text with characters split across tokens
    assert sum(is_utf8(d) and not all(map(is_utf8, pieces)) for d, pieces in zip(data, cases)) >= 4


# ---- (a) the C repair, as pvqrun streams

def test_c_repair_of_vocabulary_sequences_equals_python_for_every_split(cases):
    for pieces in cases:
        data = b"".join(pieces)
        want = reference(data).encode()
        splits = [pieces, list(data[i:i + 1] for i in range(len(data)))]
        splits += [[data[:k], data[k:]] for k in range(len(data) + 1)]
        for split in splits:
            chunks = c_stream(split)
            assert b"".join(chunks) == want, (split, chunks)
            assert all(is_utf8(c) for c in chunks), (split, chunks)  # no chunk ends inside a character


def random_byte_pieces(n: int) -> list[list[bytes]]:
    """Every kind of lead, continuation and never-valid byte (also those no SmolLM2 token holds), in random
    order and cut into random pieces."""
    alphabet = [0x41, 0x80, 0x8f, 0x90, 0x9f, 0xa0, 0xbf, 0xc0, 0xc1, 0xc2, 0xdf, 0xe0, 0xe1, 0xec, 0xed, 0xee,
                0xef, 0xf0, 0xf1, 0xf3, 0xf4, 0xf5, 0xf8, 0xfe, 0xff]
    rng = random.Random(1)
    out = []
    for _ in range(n):
        data = bytes(rng.choice(alphabet) for _ in range(rng.randrange(12)))
        cuts = sorted(rng.sample(range(len(data) + 1), min(len(data) + 1, rng.randrange(5))))
        out.append([data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)])])
    return out


def test_c_repair_of_random_bytes_equals_python():
    for pieces in random_byte_pieces(20000):
        data = b"".join(pieces)
        chunks = c_stream(pieces)
        assert b"".join(chunks) == reference(data).encode(), pieces
        assert all(is_utf8(c) for c in chunks), pieces


def test_c_repair_holds_a_valid_prefix_and_flushes_it_as_one_replacement():
    ffi, L = lib()
    out, n = ffi.new("char[]", 64), ffi.new("size_t *")
    for prefix in [b"\xc3", b"\xe6\x9d", b"\xf0\x9f\x98", b"\xf4\x8f\xbf"]:
        assert L.pvq_utf8_repair(b"ab" + prefix, 2 + len(prefix), 0, out, n) == 2 and ffi.buffer(out, n[0])[:] == b"ab"
        assert L.pvq_utf8_repair(prefix, len(prefix), 1, out, n) == len(prefix)
        assert ffi.buffer(out, n[0])[:] == FFFD.encode()
    # a prefix that cannot be completed is not held
    for bad in [b"\xed\xa0", b"\xe0\x9f", b"\xf4\x90", b"\xf0\x8f", b"\xc0", b"\xf5"]:
        assert L.pvq_utf8_repair(bad, len(bad), 0, out, n) == len(bad)
        assert ffi.buffer(out, n[0])[:] == reference(bad).encode()


# ---- (b) the bindings

@pytest.mark.parametrize("stops", [(), ("é",), ("\n3", "東京")])
def test_text_stream_equals_python_and_never_splits_a_character(cases, stops):
    import_pvq()
    from pvq.textstream import TextStream
    for pieces in cases + random_byte_pieces(2000):
        data = b"".join(pieces)
        hits = [i for i in (data.find(s.encode()) for s in stops) if i >= 0]
        want = reference(data[:min(hits)] if hits else data)
        s = TextStream(stops)
        chunks = []
        for p in pieces:
            stopped = s.push(p)
            chunks.append(s.ready())
            if stopped:
                break
        chunks.append(s.flush())
        assert "".join(chunks) == want == s.text(), pieces
        for c in chunks:
            c.encode("utf-8")  # a valid str: no lone surrogates


@pytest.fixture(scope="module")
def llm(smollm2):
    pvq = import_pvq()
    m = pvq.Llama(str(smollm2.f16_gguf), n_ctx=256, n_threads=2, verbose=False)
    yield m
    m.close()


def test_llama_completion_text_and_chunks_are_repaired(vocab, llm, monkeypatch):
    """create_completion over a generation that yields the given tokens: the text and the streamed chunks."""
    cases = vocab_cases(vocab)[:60]
    for ids in cases:
        def generate(tokens, **kw):
            yield from ids
            while True:
                yield llm.token_eos()
        monkeypatch.setattr(llm, "generate", generate)
        want = reference(b"".join(vocab.pieces[t] for t in ids))
        whole = llm("Say it:", max_tokens=len(ids), temperature=0)["choices"][0]
        chunks = [c["choices"][0]["text"] for c in llm("Say it:", max_tokens=len(ids), temperature=0, stream=True)]
        assert whole["text"] == "".join(chunks) == want, ids
        for c in chunks:
            c.encode("utf-8")
        # a max_tokens cut, often inside a character (then one U+FFFD at the end), follows the same rule
        cut = ids[:-1]
        if cut:
            short = llm("Say it:", max_tokens=len(cut), temperature=0)["choices"][0]["text"]
            assert short == reference(b"".join(vocab.pieces[t] for t in cut))


def test_llama_echoes_a_token_prompt_repaired(vocab, llm, monkeypatch):
    prompt = vocab.seq("Hi", b"\xe5", " there ", b"\xf0", b"\x9f")

    def generate(tokens, **kw):
        yield llm.token_eos()
    monkeypatch.setattr(llm, "generate", generate)
    text = llm(prompt, max_tokens=4, echo=True, temperature=0)["choices"][0]["text"]
    assert text == reference(b"".join(vocab.pieces[t] for t in prompt)) == f"Hi{FFFD} there {FFFD}"


# ---- (c) pvqrun end to end

def test_pvqrun_prints_random_bytes_repaired(tmp_path):
    """A random-weight byte-level model sampled at high temperature emits mostly lone byte tokens, so its text
    is full of invalid sequences. For each seed the run's own token ids (--print-token-ids) give the expected
    text; -n is chosen so that the text ends inside a character, which the final flush must replace."""
    path = tiny_gguf(tmp_path / "bytes.gguf", seed=4)
    m = Model(path, n_ctx=16, logits_all=False)
    buf = m.ffi.new("char[]", 16)

    def piece(t):
        return m.ffi.buffer(buf, max(m.L.pvq_token_to_piece(m.m, t, buf, 16, 0), 0))[:]

    args = ["-m", path, "-p", "the", "-t", 1, "--temp", 3.0, "--top-k", 0, "--top-p", 1.0, "--min-p", 0]
    checked = 0
    for seed in range(10):
        r = run_pvqrun([*args, "-n", 48, "--seed", seed, "--print-token-ids"])
        assert r.returncode == 0, r.stderr.decode()
        ids = [int(t) for t in r.stdout.decode().split("\n")[1].split()]
        data = [b"".join(piece(t) for t in ids[:k]) for k in range(len(ids) + 1)]
        # texts that hold an invalid sequence and end inside a character
        ends_open = [k for k in range(len(ids) + 1) if _open(data[k])[1] and FFFD in _open(data[k])[0]]
        if not ends_open:
            continue
        for n in (ends_open[-1], len(ids)):
            r = run_pvqrun([*args, "-n", n, "--seed", seed])
            assert r.returncode == 0, r.stderr.decode()
            assert r.stdout == b"the" + reference(data[n]).encode() + b"\n", (seed, n)
            checked += 1
        break
    m.close()
    assert checked, "no seed gave a text with invalid bytes that ends inside a character"
