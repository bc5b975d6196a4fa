"""pvqrun as a user runs it: sampling flags, seeds, token ids, streaming UTF-8, threads; the API's
tokenizer glue against llama.cpp's; a short SmolLM2 generation under ASan+UBSan."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import peer_llama
from runtime_clib import Model, run_pvqrun


def _gen(model, *args, variant=None, prompt="Once upon a time"):
    kw = {"variant": variant} if variant else {}
    r = run_pvqrun(["-m", model, "-p", prompt, "-t", 2, *args], **kw)
    assert r.returncode == 0, r.stderr.decode()[-3000:]
    return r.stdout


def test_greedy_is_deterministic_and_equals_api_argmax(smollm2):
    ids = _gen(smollm2.f16_gguf, "-n", 16, "--temp", 0, "--print-token-ids").decode().split("\n")
    prompt_ids, gen_ids = [int(t) for t in ids[0].split()], [int(t) for t in ids[1].split()]
    m = Model(smollm2.f16_gguf, n_ctx=128, logits_all=False)
    assert m.tokenize("Once upon a time") == prompt_ids
    assert m.greedy(prompt_ids, len(gen_ids)) == gen_ids
    m.close()
    # top-k 1 at any temperature is greedy too
    assert _gen(smollm2.f16_gguf, "-n", 16, "--temp", 1.5, "--top-k", 1, "--print-token-ids").decode().split("\n")[1] \
        == ids[1]


def test_seed_gives_same_text_and_other_seeds_differ(smollm2):
    args = ["-n", 24, "--temp", 1.0, "--top-k", 0, "--top-p", 1.0, "--min-p", 0]
    a = _gen(smollm2.f16_gguf, *args, "--seed", 42)
    assert a == _gen(smollm2.f16_gguf, *args, "--seed", 42)
    others = {_gen(smollm2.f16_gguf, *args, "--seed", s) for s in (1, 2, 3)}
    assert len(others | {a}) >= 3


def test_thread_count_does_not_change_results(smollm2):
    a = _gen(smollm2.f16_gguf, "-n", 12, "--temp", 0, "--print-token-ids")
    for t in (1,):
        r = run_pvqrun(["-m", smollm2.f16_gguf, "-p", "Once upon a time", "-t", t, "-n", 12, "--temp", 0,
                        "--print-token-ids"])
        assert r.stdout == a


def test_repeat_penalty_changes_a_repetitive_continuation(smollm2):
    p = "one one one one one one one one one one"
    plain = _gen(smollm2.f16_gguf, "-n", 8, "--temp", 0, prompt=p)
    penal = _gen(smollm2.f16_gguf, "-n", 8, "--temp", 0, "--repeat-penalty", 3.0, prompt=p)
    assert plain != penal
    assert penal[len(p):].count(b"one") <= plain[len(p):].count(b"one")


def test_streamed_output_is_valid_utf8(smollm2):
    # High temperature on a multilingual prompt samples many multi-byte tokens, split characters and, on some
    # machines' numerics, byte tokens that never complete one. Whatever this machine samples, the text must be
    # the same seed's token ids decoded as Python's errors="replace" does (test_utf8_stream.py forces the
    # invalid sequences).
    args = ["-n", 200, "--temp", 2.0, "--top-k", 0, "--top-p", 1.0, "--min-p", 0, "--seed", 5]
    prompt = "日本語のテキスト: 東京は"
    out = _gen(smollm2.f16_gguf, *args, prompt=prompt)
    lines = _gen(smollm2.f16_gguf, *args, "--print-token-ids", prompt=prompt).decode().split("\n")
    ids = [int(t) for t in lines[1].split()]
    m = Model(smollm2.f16_gguf, n_ctx=16, logits_all=False)
    buf = m.ffi.new("char[]", 256)
    pieces = [m.ffi.buffer(buf, max(m.L.pvq_token_to_piece(m.m, t, buf, 256, 0), 0))[:] for t in ids]
    m.close()
    assert out == (prompt + b"".join(pieces).decode("utf-8", errors="replace") + "\n").encode()
    out.decode("utf-8")  # strict


def test_api_tokenize_matches_peer_with_special_tokens(smollm2):
    peer = peer_llama(smollm2.f16_gguf, n_ctx=64, vocab_only=True)
    m = Model(smollm2.f16_gguf, n_ctx=16, logits_all=False)
    for text in ["<|im_start|>user\nHi there<|im_end|>\n", "  spaces\tand\nnewlines ", "Ünïcödé ✓ 🎉"]:
        assert m.tokenize(text) == peer.tokenize(text.encode(), add_bos=True, special=True), text
    assert m.L.pvq_token_is_eog(m.m, peer.token_eos())
    m.close()


def test_generation_under_sanitizers(smollm2):
    out = _gen(smollm2.f16_gguf, "-n", 6, "--temp", 0.7, "--seed", 1,
               variant="build-asan", prompt="The capital of France is")
    assert out.startswith(b"The capital of France is")


def test_help_lists_the_flags():
    r = run_pvqrun(["--help"])
    assert r.returncode == 0
    for flag in ("-m", "-p", "-f", "-n", "-t", "-c", "--temp", "--top-k", "--top-p", "--min-p", "--repeat-penalty",
                 "--seed", "--print-token-ids", "--perplexity", "--kl-divergence-base", "--kl-divergence"):
        assert flag.encode() in r.stdout
