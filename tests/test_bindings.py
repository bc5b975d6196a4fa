"""pvq.Llama against llama-cpp-python's Llama on the SmolLM2 F16 file: the same calls on both. Tests
parametrised over `impl` check the API's contract on each implementation (so the contract is the peer's real
behaviour); the others compare pvq's results with the peer's."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from bindings_util import import_pvq
from conftest import peer_llama

IMPLS = ["llama_cpp", "pvq"]


@pytest.fixture(scope="module")
def llms(smollm2):
    pvq = import_pvq()
    both = {"llama_cpp": peer_llama(smollm2.f16_gguf, n_ctx=512, logits_all=True),
            "pvq": pvq.Llama(str(smollm2.f16_gguf), n_ctx=512, n_threads=2, logits_all=True, verbose=False)}
    yield both
    both["pvq"].close()
    both["llama_cpp"].close()


def fresh(llm):
    """Forget the KV cache: a prompt evaluated from scratch gives the same logits every time (a reused prefix
    is evaluated in other batch shapes and can flip near-ties, in both implementations)."""
    llm.reset()
    return llm


def each(llms, call):
    return {name: call(fresh(llm)) for name, llm in llms.items()}


TEXTS = ["The capital of France is", "Hello, world!  \n\n\tIndented   spaces", "<|im_start|>user\nHi<|im_end|>",
         "naïve café — 東京 😀 ١٢٣ Привет", "   leading spaces and 12345678 digits", ""]


@pytest.mark.parametrize("special", [False, True])
@pytest.mark.parametrize("text", TEXTS)
def test_tokenize_and_detokenize_match_peer(llms, text, special):
    got = each(llms, lambda m: m.tokenize(text.encode(), add_bos=True, special=special))
    assert got["pvq"] == got["llama_cpp"]
    back = each(llms, lambda m: m.detokenize(got["llama_cpp"], special=special))
    assert back["pvq"] == back["llama_cpp"]


COMPLETIONS = [  # (prompt, keyword arguments): length, end of text, stop strings, echo
    ("The capital of France is", dict(max_tokens=40)),
    ("Here is a short story about a robot:", dict(max_tokens=24)),
    ("The capital of France is", dict(max_tokens=48, stop=["answer"])),
    ("List three fruits:\n1.", dict(max_tokens=48, stop=["\n3", "zzz"])),
    ("def fibonacci(n):", dict(max_tokens=32, echo=True)),
]


@pytest.mark.parametrize("prompt,kw", COMPLETIONS)
def test_greedy_completion_matches_peer(llms, prompt, kw):
    got = each(llms, lambda m: m.create_completion(prompt, temperature=0, **kw))
    mine, peer = got["pvq"]["choices"][0], got["llama_cpp"]["choices"][0]
    assert mine["text"] == peer["text"]
    assert mine["finish_reason"] == peer["finish_reason"]
    assert got["pvq"]["usage"] == got["llama_cpp"]["usage"]


def test_completion_cases_cover_length_and_stop(llms):
    """The cases above reach both finish reasons, a stop string among them (else they would prove little)."""
    seen = set()
    for prompt, kw in COMPLETIONS:
        r = fresh(llms["pvq"])(prompt, temperature=0, **kw)
        seen.add((r["choices"][0]["finish_reason"], bool(kw.get("stop"))))
    assert {("length", False), ("stop", True), ("stop", False)} <= seen


def shape(obj):
    """The structure of a result: dict keys and value types, recursively."""
    if isinstance(obj, dict):
        return {k: shape(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [shape(v) for v in obj[:1]]
    return type(obj).__name__


def test_result_dicts_have_the_peers_shape(llms):
    got = each(llms, lambda m: m("The capital of France is", temperature=0, max_tokens=8))
    assert shape(got["pvq"]) == shape(got["llama_cpp"])
    assert got["pvq"]["object"] == "text_completion" and got["pvq"]["id"].startswith("cmpl-")
    chat = each(llms, lambda m: m.create_chat_completion([{"role": "user", "content": "Hi"}], max_tokens=4,
                                                         temperature=0))
    assert shape(chat["pvq"]) == shape(chat["llama_cpp"])


CHATS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "You are a terse assistant."},
     {"role": "user", "content": "Name a primary colour."},
     {"role": "assistant", "content": "Red."},
     {"role": "user", "content": "Another one?"}],
]


@pytest.mark.parametrize("add_generation_prompt", [True, False])
@pytest.mark.parametrize("messages", CHATS)
def test_chat_template_renders_as_the_peer(llms, messages, add_generation_prompt):
    """apply_chat_template against llama-cpp-python's own Jinja2 formatter of the file's template."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter
    peer = llms["llama_cpp"]
    special = lambda t: peer.detokenize([t], special=True).decode()
    formatter = Jinja2ChatFormatter(peer.metadata["tokenizer.chat_template"], eos_token=special(peer.token_eos()),
                                    bos_token=special(peer.token_bos()), add_generation_prompt=add_generation_prompt)
    mine = llms["pvq"].apply_chat_template(messages, add_generation_prompt=add_generation_prompt)
    assert mine == formatter(messages=messages).prompt
    assert mine.endswith("<|im_start|>assistant\n") == add_generation_prompt


@pytest.mark.parametrize("max_tokens", [None, 6])
@pytest.mark.parametrize("messages", CHATS)
def test_greedy_chat_completion_matches_peer(llms, messages, max_tokens):
    got = each(llms, lambda m: m.create_chat_completion(messages, temperature=0, max_tokens=max_tokens))
    mine, peer = got["pvq"]["choices"][0], got["llama_cpp"]["choices"][0]
    assert mine["message"] == peer["message"]
    assert mine["finish_reason"] == peer["finish_reason"]
    assert got["pvq"]["usage"] == got["llama_cpp"]["usage"]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("kw", [dict(max_tokens=40), dict(max_tokens=48, stop=["answer"])])
def test_stream_concatenates_to_the_completion(llms, impl, kw):
    llm = llms[impl]
    whole = fresh(llm)("The capital of France is", temperature=0, **kw)
    chunks = list(fresh(llm)("The capital of France is", temperature=0, stream=True, **kw))
    assert "".join(c["choices"][0]["text"] for c in chunks) == whole["choices"][0]["text"]
    assert [c["choices"][0]["finish_reason"] for c in chunks[:-1]] == [None] * (len(chunks) - 1)
    assert chunks[-1]["choices"][0]["finish_reason"] == whole["choices"][0]["finish_reason"]


@pytest.mark.parametrize("impl", IMPLS)
def test_stream_never_splits_a_utf8_character(llms, impl):
    llm, prompt = llms[impl], "日本語の文章: 私は"
    tokens = llm.tokenize(prompt.encode(), special=True)
    generated = []
    for t in fresh(llm).generate(tokens, temp=0):
        generated.append(t)
        if len(generated) == 24:
            break
    pieces = [llm.detokenize([t]) for t in generated]
    split = [p for p in pieces if p and not _is_utf8(p)]
    assert split, "the continuation has no character split across tokens; the test would prove nothing"
    # the longest run of tokens that ends on a character boundary (strict decoding succeeds)
    n = max(k for k in range(1, len(pieces) + 1) if _is_utf8(b"".join(pieces[:k])))
    text = b"".join(pieces[:n]).decode("utf-8")
    chunks = [c["choices"][0]["text"] for c in fresh(llm)(prompt, temperature=0, max_tokens=n, stream=True)]
    assert "".join(chunks) == text
    assert all("\ufffd" not in c for c in chunks)


def _is_utf8(b: bytes) -> bool:
    try:
        b.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def test_text_stream_holds_back_partial_characters_and_stop_prefixes():
    from pvq.textstream import TextStream
    s = TextStream(stops=["<end>"])
    out = []
    for piece in [b"caf", b"\xc3", b"\xa9 \xf0\x9f", b"\x98", b"\x80 <e", b"n", b"d> after"]:
        stopped = s.push(piece)
        out.append(s.ready())
    assert out == ["caf", "", "é ", "", "😀 ", "", ""] and stopped
    assert s.flush() == "" and s.text() == "café 😀 "
    s = TextStream(stops=["<end>"])
    assert not s.push(b"a <e") and s.ready() == "a " and not s.push(b"x") and s.ready() == "<ex"


def test_logits_match_peer(llms):
    """scores rows line up with positions (logits_all) and agree with llama.cpp's on the F16 model."""
    tokens = llms["pvq"].tokenize(b"The quick brown fox jumps over the lazy dog because it")
    rows = {}
    for name, llm in llms.items():
        fresh(llm).eval(tokens)
        rows[name] = np.array(llm._scores[:len(tokens)])
    a, b = rows["pvq"], rows["llama_cpp"]
    assert a.shape == b.shape == (len(tokens), llms["pvq"].n_vocab())
    assert (a.argmax(1) == b.argmax(1)).mean() >= 0.9
    assert np.abs(a - b).max() / np.abs(b).max() < 0.02
    assert len(llms["pvq"].eval_logits) == len(tokens) and llms["pvq"].eval_tokens[-1] == tokens[-1]


def test_logprobs_match_peer(llms):
    got = each(llms, lambda m: m("The capital of France is", temperature=0, max_tokens=6, logprobs=3))
    mine, peer = got["pvq"]["choices"][0]["logprobs"], got["llama_cpp"]["choices"][0]["logprobs"]
    assert mine["tokens"] == peer["tokens"] and mine["text_offset"] == peer["text_offset"]
    np.testing.assert_allclose(mine["token_logprobs"], peer["token_logprobs"], atol=0.05)
    for t_mine, t_peer in zip(mine["top_logprobs"], peer["top_logprobs"]):
        assert list(t_mine)[0] == list(t_peer)[0]


@pytest.mark.parametrize("impl", IMPLS)
def test_sampling_is_reproducible_with_a_seed(llms, impl):
    run = lambda: fresh(llms[impl])("Once upon a time", temperature=0.9, top_k=40, top_p=0.95, max_tokens=16,
                                    seed=1234)["choices"][0]["text"]
    assert run() == run()


def test_n_ctx_and_context_manager(smollm2):
    pvq = import_pvq()
    with pvq.Llama(str(smollm2.f16_gguf), n_ctx=256, n_threads=2, verbose=False) as llm:
        assert llm.n_ctx() == 256 and llm.n_vocab() == 49152 and llm.n_embd() == 576
    with pytest.raises(pvq.PvqError, match="closed"):
        llm.n_ctx()


def test_shared_weights_keep_separate_contexts(llms):
    """Llama.share(): a second context on the same loaded model. Two streams consumed in turn (which corrupts
    each other on one Llama) each give the text their prompt gives alone; either closes without the other."""
    llm = llms["pvq"]
    twin = llm.share()
    assert twin._model == llm._model and twin._ctx != llm._ctx and twin.n_ctx() == llm.n_ctx()
    prompts = ["The capital of France is", "Here is a short story about a robot:"]
    alone = [fresh(llm)(p, temperature=0, max_tokens=16)["choices"][0]["text"] for p in prompts]
    streams = [fresh(m)(p, temperature=0, max_tokens=16, stream=True) for m, p in zip((llm, twin), prompts)]
    texts = ["", ""]
    for pair in itertools.zip_longest(*streams):
        for i, chunk in enumerate(pair):
            texts[i] += chunk["choices"][0]["text"] if chunk else ""
    assert texts == alone
    third = twin.share()
    twin.close()
    assert fresh(third)(prompts[0], temperature=0, max_tokens=16)["choices"][0]["text"] == alone[0]
    weights = third._weights
    third.close()
    assert weights.ptr is not None  # llm still holds the model
