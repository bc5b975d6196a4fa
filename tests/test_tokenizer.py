"""The C tokenizers (runtime/src/tokenizer.c) against independent references: llama.cpp's own test
vectors, llama.cpp itself through llama-cpp-python (SmolLM2 on the whole eval text, every vocabulary
on random text, every token's piece), sentencepiece on the SPM fixture; and hostile input, run under
AddressSanitizer, UBSan and LeakSanitizer."""
from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest

import tok_harness as H
from models import EVAL_TEXT, SHARED_DATA

VECTORS = SHARED_DATA / "tokenizer"
ROOT = Path(__file__).resolve().parents[1]
GGML_VOCABS = ["llama-spm", "llama-bpe", "gpt-2"]


@pytest.fixture(scope="module")
def lib():
    return H.Lib()


def ggml_vocab(name: str) -> Path:
    return VECTORS / f"ggml-vocab-{name}.gguf"


@pytest.mark.parametrize("name", GGML_VOCABS)
def test_llama_cpp_test_vectors(lib, name):
    path = ggml_vocab(name)
    tok = lib.tokenizer(H.vocab_from_gguf(path))
    cases = H.read_vocab_tests(path)
    assert len(cases) >= 40
    # as llama.cpp's test-tokenizer-0: no BOS/EOS, special token texts not parsed
    failures = [(text, got, want) for text, want in cases if (got := tok.encode(text)) != want]
    assert not failures
    for text, want in cases:  # the pieces give the input back (SPM: after the space put in front)
        assert tok.decode(want) == (b" " + text if name == "llama-spm" and text else text)


def random_text(rng: random.Random, specials: list[str]) -> str:
    """Strings that reach every branch of the pre-tokenizer regexes and the merge loops."""
    pools = [
        " \t\n\r\r\n  ", "abcdefXYZ", "'s'S're'VE'm'LL'd'x", "0123456789", "٣४¼Ⅻ²",
        ".,!?-_()[]{}<>/\\\"$%^&*+=~`|@#", "éßçñøÆΩжЖ日本語한국어ไทยअक्ष",
        "\u00a0\u2003\u3000\u0085\u2028\u200b\ufeff\u000b\u000c", "\u0301\u0308\u20dd",
        "\u0378\ue000\U0010fffd\U000e0001",
    ]
    emoji = ["🦙", "🚀", "😶‍🌫️", "✅", "🧑‍💻"]
    out = []
    for _ in range(rng.randrange(40)):
        r = rng.random()
        if r < 0.05 and specials:
            out.append(rng.choice(specials))
        elif r < 0.12:
            out.append(rng.choice(emoji))
        elif r < 0.17:
            out.append(rng.choice("0123456789 ") * rng.randrange(1, 9))
        else:
            out.append(rng.choice(rng.choice(pools)))
    return "".join(out)


def peer_vocab(path: Path):
    from llama_cpp import Llama
    return Llama(str(path), vocab_only=True, verbose=False)


@pytest.mark.parametrize("name", GGML_VOCABS + ["gpt-2 with the qwen2 pre-tokenizer",
                                                "gpt-2 with the default pre-tokenizer", "smollm2"])
def test_matches_llama_cpp(lib, request, name):
    """Random text, with and without BOS/EOS and special-token parsing; every token's piece
    (special or not); the end-of-generation set."""
    import ctypes

    import llama_cpp
    if name == "smollm2":
        path = request.getfixturevalue("smollm2").q4_1_gguf
    elif name.startswith("gpt-2 with"):
        path = H.gguf_with_pre(ggml_vocab("gpt-2"), name.split()[3])
    else:
        path = ggml_vocab(name)
    vocab = H.vocab_from_gguf(path)
    tok, peer = lib.tokenizer(vocab), peer_vocab(path)
    assert bool(tok.L.tokenizer_adds_bos(tok.t)) == bool(llama_cpp.llama_vocab_get_add_bos(
        llama_cpp.llama_model_get_vocab(peer.model)))
    specials = [t.decode() for t, ty in zip(vocab.tokens, vocab.types) if ty == H.TYPE_CONTROL][:40]
    rng = random.Random(sum(map(ord, name)))
    for _ in range(400):
        text = random_text(rng, specials).encode()
        for special in (False, True):
            assert tok.encode(text, special, special) == peer.tokenize(text, add_bos=special, special=special), text

    pvocab = llama_cpp.llama_model_get_vocab(peer.model)
    buf = ctypes.create_string_buffer(1024)
    for tid in range(len(vocab.tokens)):
        for special in (False, True):
            n = llama_cpp.llama_token_to_piece(pvocab, tid, buf, len(buf), 0, special)
            assert tok.piece(tid, special) == buf.raw[:n], (tid, special)
        assert tok.is_eog(tid) == bool(llama_cpp.llama_vocab_is_eog(pvocab, tid)), tid


def test_smollm2_eval_text(lib, smollm2, eval_text):
    tok, peer = lib.tokenizer(H.vocab_from_gguf(smollm2.q4_1_gguf)), peer_vocab(smollm2.q4_1_gguf)
    data = eval_text.encode()
    ids = tok.encode(data)
    assert len(ids) > 200_000
    assert ids == peer.tokenize(data, add_bos=False, special=False)
    assert tok.decode(ids) == data
    chat = "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"
    ids = tok.encode(chat, add_special=True, parse_special=True)
    assert ids == peer.tokenize(chat.encode(), add_bos=True, special=True)
    assert ids.count(1) == 3 and ids.count(2) == 2  # <|im_start|>, <|im_end|> as single tokens
    assert tok.decode(ids, special=True) == chat.encode()
    assert b"<|im_start|>" not in tok.decode(ids)


SPM_TRICKY = ["  multiple   spaces  ", "tab\there\ttoo", "digits 1234567890 and 3.14159", "emoji 🦙🚀😶‍🌫️ need bytes",
              "naïve café — “quotes” 日本語 Ελληνικά", " leading", "trailing ", " ", "\n\n", "<s> </s> <unk> <0x41>",
              "a" * 500, "x\u00a0y\u3000z", "\ufeffbom", "Ǆ ǅ ǆ ﬁ", "\U0010fffd\ue000"]


def test_spm_fixture_matches_sentencepiece(lib, spm_model_dir, eval_text):
    import sentencepiece as spm
    model = spm_model_dir / "tokenizer.model"
    sp = spm.SentencePieceProcessor(model_file=str(model))
    tok = lib.tokenizer(H.vocab_from_sentencepiece(model))
    lines = [line for line in eval_text.split("\n") if line.strip()]
    assert len(lines) >= 200
    for text in lines + SPM_TRICKY:
        assert tok.encode(text) == sp.encode(text), text
    ids = tok.encode(eval_text)
    assert ids == sp.encode(eval_text)
    assert tok.decode(ids) == b" " + eval_text.encode()  # SPM puts one space in front
    assert tok.encode("Hello", add_special=True) == [sp.bos_id()] + sp.encode("Hello")
    assert tok.encode("", add_special=True) == [sp.bos_id()]


INVALID_UTF8 = [
    b"\x80", b"abc\xbfdef", b"\xc0\xaf", b"\xc1\xbf", b"\xe0\x80\xaf", b"\xe0\x9f\xbf", b"\xf0\x80\x80\xaf",
    b"\xf0\x8f\xbf\xbf", b"\xed\xa0\x80", b"\xed\xbf\xbf", b"\xed\xa0\xbd\xed\xb2\xa9", b"\xf4\x90\x80\x80",
    b"\xf5\x80\x80\x80", b"\xf8\x88\x80\x80\x80", b"\xfe", b"\xff", b"\xc3", b"text \xe2\x82", b"\xe2\x82 text",
    b"emoji \xf0\x9f\xa6", b"\xf0\x9f\xa6 emoji", b"<|im_start|>\xc3<|im_end|>",
]


@pytest.mark.parametrize("name", ["llama-spm", "gpt-2"])
def test_invalid_utf8_is_an_error(lib, name):
    tok = lib.tokenizer(H.vocab_from_gguf(ggml_vocab(name)))
    for data in INVALID_UTF8:
        with pytest.raises(UnicodeDecodeError):
            data.decode("utf-8")
        for special in (False, True):
            with pytest.raises(H.TokError) as e:
                tok.encode(data, special, special)
            assert e.value.code == H.ERR_UTF8, data
    rng = random.Random(7)
    random_bytes = [bytes(rng.randrange(256) for _ in range(rng.randrange(1, 12))) for _ in range(3000)]
    every_pair = [bytes([a, b]) for a in range(256) for b in range(256)]
    long_leads = [bytes([a, b, 0x80, 0x80][:3 if a < 0xF0 else 4]) for a in range(0xE0, 0x100) for b in range(256)]
    for data in random_bytes + every_pair + long_leads:  # an error exactly when Python's decoder refuses
        try:
            data.decode("utf-8")
            valid = True
        except UnicodeDecodeError:
            valid = False
        try:
            tok.encode(data, True, True)
            assert valid, data
        except H.TokError as e:
            assert not valid and e.code == H.ERR_UTF8, data


def test_output_buffers_too_small(lib):
    tok = lib.tokenizer(H.vocab_from_gguf(ggml_vocab("gpt-2")))
    full = tok.encode("Hello world, these are several tokens.")
    with pytest.raises(OverflowError) as e:
        tok.encode("Hello world, these are several tokens.", max_tokens=3)
    assert e.value.args[0] == len(full)
    long_piece = max(range(len(full)), key=lambda i: len(tok.piece(full[i])))
    p = tok.piece(full[long_piece])
    assert tok.L.tokenizer_piece(tok.t, full[long_piece], None, 0, 0) == -len(p)
    for bad in (-1, 50257, 2**31 - 1):
        assert tok.L.tokenizer_piece(tok.t, bad, None, 0, 0) == H.ERR_ID
    with pytest.raises(H.TokError) as e:  # over TOK_MAX_INPUT (16 MiB): refused before any work
        tok.encode(b"a" * ((1 << 24) + 1))
    assert e.value.code == H.ERR_TOO_LONG


def reference_incomplete(buf: bytes) -> int:
    """How many trailing bytes start a character that some continuation makes valid for Python's strict
    decoder (0 when they are complete or can never become valid)."""
    for k in range(1, min(3, len(buf)) + 1):
        lead = buf[-k]
        if lead & 0xC0 == 0x80:
            continue  # a continuation byte: the lead is further back
        need = 1 if lead < 0x80 else 2 if lead < 0xE0 else 3 if lead < 0xF0 else 4
        if need <= k:
            return 0
        tail = buf[-k:]
        for second in ([tail[1]] if k >= 2 else range(0x80, 0xC0)):
            candidate = bytes([lead, second]) + tail[2:] + b"\x80" * (need - max(k, 2))
            try:
                candidate.decode("utf-8")
                return k
            except UnicodeDecodeError:
                pass
        return 0
    return 0


def test_streaming_utf8_helper(lib, smollm2):
    rng = random.Random(3)
    samples = [b"".join(rng.choice([b"a", b"\xc3", b"\xa9", b"\xe2\x82", b"\xac", b"\xf0\x9f", b"\xa6\x99",
                                    b"\xed\xa0", b"\xf4\x90", b"\xe0\x9f", b"\x80"]) for _ in range(rng.randrange(6)))
               for _ in range(3000)]
    for buf in samples:
        assert lib.utf8_incomplete(buf) == reference_incomplete(buf), buf
    # streaming SmolLM2's pieces one token at a time prints whole characters only, and all of the text
    tok = lib.tokenizer(H.vocab_from_gguf(smollm2.q4_1_gguf))
    text = "Ünïcödé → 日本語のテキスト, emoji 🦙🧑‍💻 and Ελληνικά.".encode()
    printed, held = [], b""
    for tid in tok.encode(text):
        held += tok.piece(tid)
        n = len(held) - lib.utf8_incomplete(held)
        printed.append(held[:n].decode("utf-8"))  # never half a character
        held = held[n:]
    assert held == b"" and "".join(printed).encode() == text


def pathological_inputs() -> list[bytes]:
    return [b"", b"a" * 100_000, b" " * 50_000 + b"x", b"7" * 30_000, b"\n" * 20_000, "🦙".encode() * 10_000,
            b"<|im_start|>" * 5_000, b"<s>" * 5_000, b"'" * 20_000 + b"s", b"\r\n \t" * 10_000,
            "\u3000\u00a0".encode() * 10_000, "e\u0301".encode() * 20_000]


@pytest.mark.parametrize("name", ["llama-spm", "llama-bpe", "smollm2"])
def test_hostile_input_under_sanitizers(lib, tmp_path, request, name):
    """Random bytes, random text with special tokens and huge degenerate inputs through the ASan/UBSan
    build: no report, no leak, the same results as the ordinary build, and every piece consistent."""
    path = request.getfixturevalue("smollm2").q4_1_gguf if name == "smollm2" else ggml_vocab(name)
    vocab = H.vocab_from_gguf(path)
    specials = [t.decode() for t, ty in zip(vocab.tokens, vocab.types) if ty == H.TYPE_CONTROL][:20]
    rng = random.Random(11)
    inputs = [bytes(rng.randrange(256) for _ in range(rng.randrange(24))) for _ in range(1500)]
    inputs += [random_text(rng, specials).encode() for _ in range(1500)]
    inputs += INVALID_UTF8 + pathological_inputs()
    records = [(data, rng.randrange(4)) for data in inputs]
    result = H.run_fuzz_driver(H.build_fuzz_driver(), vocab, records, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:] + result.stdout[-500:]
    assert "Sanitizer" not in result.stderr and "runtime error" not in result.stderr, result.stderr[-3000:]
    counts = [int(line) for line in result.stdout.split()]
    assert len(counts) == len(records)
    tok = lib.tokenizer(vocab)
    for (data, flags), n in zip(records, counts):
        try:
            assert len(tok.encode(data, flags & 1, flags & 2)) == n
        except H.TokError as e:
            assert e.code == n == H.ERR_UTF8


def tiny_vocab(**changes) -> H.Vocab:
    tokens = [b"<unk>", b"<s>", b"</s>", b"a", b"b", b"ab", b"\xe2\x96\x81", b"\xe2\x96\x81a", b"", b"a", b"<0x41>"]
    v = H.Vocab(kind=H.SPM, tokens=tokens, scores=[0, 0, 0, -1, -2, -0.5, -3, -0.2, 0, -9, 0],
                types=[2, 3, 3, 1, 1, 1, 1, 1, 3, 1, 6], bos=1, eos=2, unk=0, add_bos=True, add_space_prefix=True)
    for k, val in changes.items():
        setattr(v, k, val)
    return v


@pytest.mark.parametrize("changes, message", [
    (dict(bos=11), "bos_id 11 is outside"), (dict(eos=1 << 20), "eos_id"), (dict(bos=-1), "asks to add BOS"),
    (dict(tokens=[]), "no vocabulary"), (dict(kind=7), "unknown tokenizer kind"),
    (dict(kind=H.BPE, pre=-1), "pre-tokenizer -1 is not supported"), (dict(kind=H.BPE, pre=99), "not supported"),
])
def test_inconsistent_vocabulary_is_refused(lib, changes, message):
    v = tiny_vocab(**changes)
    if not v.tokens:
        v.scores = v.types = None
    with pytest.raises(ValueError, match=message):
        lib.tokenizer(v)


def test_odd_vocabulary(lib, tmp_path):
    """Empty and duplicate token texts, an empty control token, merges that name no tokens, unknown
    token types: accepted and harmless (the empty control text is never matched)."""
    v = tiny_vocab(types=[2, 3, 3, 1, 1, 1, 1, 1, 3, 1, 42])
    tok = lib.tokenizer(v)
    assert tok.encode("ab a", add_special=True, parse_special=True) == [1, 7, 4, 7]  # "▁a" "b" "▁a"; later "a" wins
    # a character with neither a token nor a byte token becomes <unk>; "A" has its <0x41>
    plain = lib.tokenizer(tiny_vocab(add_eos=True))
    assert plain.encode("cA", add_special=True) == [1, 6, 0, 10, 2]
    assert plain.decode([1, 6, 0, 10, 2]) == b" A" and plain.decode([0], special=True) == b"<unk>"
    bpe = H.Vocab(kind=H.BPE, pre=1, tokens=[b"a", b"b", b"ab", b"", b"<|x|>"], types=[1, 1, 1, 3, 3],
                  merges=[b"a b", b"ab", b" ", b"", b"q r", b"a  b", b"a b"], eos=4)
    btok = lib.tokenizer(bpe)
    assert btok.encode("abab<|x|>c", parse_special=True) == [2, 2, 4]  # "c" has no token: dropped, as llama.cpp
    records = [(b"ab a <s></s>\xff", 3), (b"abab<|x|>c", 2), (b"", 1)]
    for vocab in (v, bpe):
        result = H.run_fuzz_driver(H.build_fuzz_driver(), vocab, records, tmp_path)
        assert result.returncode == 0 and "Sanitizer" not in result.stderr, result.stderr[-3000:]


def random_vocab(rng: random.Random) -> H.Vocab:
    """Arbitrary bytes as token texts (duplicates, empty, invalid UTF-8), arbitrary scores, types,
    merges and special ids."""
    alphabet = [b"a", b"b", b" ", b"\n", b"<", b">", "\u2581".encode(), "é".encode(), b"\xc3", b"\xff", b"'s", b"1"]
    tokens = [b"".join(rng.choice(alphabet) for _ in range(rng.randrange(4))) for _ in range(rng.randrange(1, 300))]
    tokens += [f"<0x{b:02X}>".encode() for b in rng.sample(range(256), rng.randrange(256))]
    n = len(tokens)
    merges = [rng.choice(tokens) + rng.choice([b" ", b"", b"  "]) + rng.choice(tokens) for _ in range(rng.randrange(400))]
    ids = lambda: rng.randrange(-3, n)  # noqa: E731
    kind = rng.choice([H.SPM, H.BPE])
    bos, eos = ids(), ids()
    return H.Vocab(kind=kind, pre=rng.randrange(5) if kind == H.BPE else 0, tokens=tokens,
                   scores=[rng.choice([0.0, -0.0, -1.0, rng.uniform(-20, 5), float("nan")]) for _ in range(n)],
                   types=[rng.randrange(-1, 9) for _ in range(n)], merges=merges, bos=bos, eos=eos, unk=ids(),
                   pad=ids(), add_bos=bos >= 0 and rng.random() < 0.5, add_eos=eos >= 0 and rng.random() < 0.5,
                   add_space_prefix=rng.random() < 0.5)


def test_random_vocabularies_under_sanitizers(tmp_path):
    rng = random.Random(5)
    exe = H.build_fuzz_driver()
    for _ in range(12):
        vocab = random_vocab(rng)
        inputs = [(bytes(rng.randrange(256) for _ in range(rng.randrange(16))), rng.randrange(4)) for _ in range(100)]
        inputs += [(random_text(rng, [t.decode(errors="replace") for t in vocab.tokens[:30]]).encode(),
                    rng.randrange(4)) for _ in range(200)]
        result = H.run_fuzz_driver(exe, vocab, inputs, tmp_path)
        assert result.returncode == 0, result.stderr[-3000:] + result.stdout[-500:]
        assert "Sanitizer" not in result.stderr and "runtime error" not in result.stderr, result.stderr[-3000:]


def test_unicode_tables_are_generated(tmp_path):
    """The committed table is what the generator writes from this Python's unicodedata."""
    import subprocess
    out = tmp_path / "unicode_tables.c"
    subprocess.run([sys.executable, str(ROOT / "runtime" / "tools" / "gen_unicode_tables.py"), str(out)],
                   check=True, capture_output=True)
    assert out.read_bytes() == (ROOT / "runtime" / "src" / "unicode_tables.c").read_bytes()
