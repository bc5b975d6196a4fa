"""Perplexity / KLD (pvq_convert.eval) against llama.cpp's logits scored the llama-perplexity way."""
import json

import numpy as np
import pytest
import torch

from conftest import peer_llama
from pvq_convert.eval import chunks, gguf_tokenizer, hf_tokenizer, main, score, split_text
from pvq_convert.torch_model import load_model

N_CTX, N_CHUNKS = 128, 3


@pytest.fixture(scope="module")
def eval_half(eval_text):
    return split_text(eval_text)[1][:20000]


@pytest.fixture(scope="module")
def tok(smollm2):
    return gguf_tokenizer(smollm2.f16_gguf)


@pytest.fixture(scope="module")
def token_chunks(tok, eval_half):
    return chunks(tok.encode(eval_half), N_CTX, N_CHUNKS, tok)


@pytest.fixture(scope="module")
def model(smollm2):
    torch.set_num_threads(2)
    return load_model(smollm2.hf_dir)


def test_split_and_tokenizers(eval_text, smollm2, tok, eval_half):
    calib, ev = split_text(eval_text)
    assert calib + ev == eval_text and calib.endswith("\n") and abs(len(calib) - len(ev)) < 1000
    assert not tok.add_bos  # SmolLM2's vocabulary adds no BOS, so chunks start with text tokens
    assert hf_tokenizer(smollm2.hf_dir).encode(eval_half[:5000]) == tok.encode(eval_half[:5000])


def test_perplexity_matches_llama_cpp(smollm2, model, token_chunks):
    peer = peer_llama(smollm2.f16_gguf, logits_all=True, n_ctx=N_CTX)
    nll, count = 0.0, 0
    peer_logits = []
    for c in token_chunks:  # llama-perplexity: fresh cache, logits at n_ctx/2 .. n_ctx-2 score the next token
        peer.reset()
        peer.eval(c)
        lg = np.asarray(peer.scores[:N_CTX], dtype=np.float64)
        peer_logits.append(lg)
        first = N_CTX // 2
        x = lg[first:N_CTX - 1]
        m = x.max(1, keepdims=True)
        logp = x - m - np.log(np.exp(x - m).sum(1, keepdims=True))
        nll -= logp[np.arange(len(x)), c[first + 1:]].sum()
        count += len(x)
    peer_ppl = float(np.exp(nll / count))

    by_chunk = {tuple(c): torch.from_numpy(lg) for c, lg in zip(token_chunks, peer_logits)}
    s = score(model, token_chunks, base=lambda c: by_chunk[tuple(c)])
    assert s.n_tokens == count == N_CHUNKS * (N_CTX - 1 - N_CTX // 2)
    print(f"PPL ours {s.ppl:.4f}, llama.cpp {peer_ppl:.4f}, via score() {s.ppl_base:.4f}; "
          f"KLD(llama.cpp F16 || ours fp32) {s.mean_kld:.2e}, same top {s.same_top / s.n_tokens:.1%}")
    assert abs(s.ppl_base / peer_ppl - 1) < 1e-9          # score() computes the protocol as written above
    assert abs(s.ppl / peer_ppl - 1) < 0.005
    assert 0 < s.mean_kld < 1e-3 and s.same_top / s.n_tokens > 0.97


def test_kld_of_a_model_against_itself_is_zero(model, token_chunks):
    s = score(model, token_chunks[:1], base=model)
    assert s.kld == 0 and s.same_top == s.n_tokens and s.ppl == s.ppl_base


def test_cli_rotated_model(smollm2, capsys):
    assert main([str(smollm2.hf_dir), "--rotate", "--ctx", "64", "--chunks", "1", "--threads", "2"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["tokens_scored"] == 31 and out["kld"] < 1e-6 and abs(out["ppl"] / out["ppl_base"] - 1) < 1e-4


def test_cli_text_too_short(smollm2, tmp_path, capsys):
    short = tmp_path / "short.txt"
    short.write_text("Only a few words here.")
    assert main([str(smollm2.hf_dir), "--text", str(short), "--ctx", "512", "--chunks", "2"]) == 1
    assert "too short" in capsys.readouterr().err


def test_cli_bad_paths(smollm2, tmp_path, capsys):
    assert main([str(tmp_path / "nowhere")]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert main([str(smollm2.hf_dir), "--tokenizer-gguf", str(tmp_path / "none.gguf")]) == 1
    assert "not a file" in capsys.readouterr().err
