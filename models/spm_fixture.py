"""A small Llama with a SentencePiece tokenizer, for the `llama` (SPM) tokenizer path.

The tokenizer is trained with the `sentencepiece` package on the shared eval text, configured like
Llama's own (BPE, byte fallback, identity normalization, a leading "▁", digits split); the weights
are random. `build(out_dir)` writes a Hugging Face directory: tokenizer.model, config.json,
tokenizer_config.json and model.safetensors.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from . import EVAL_TEXT

CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "max_position_embeddings": 512,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "tie_word_embeddings": False,
    "hidden_act": "silu",
    "torch_dtype": "float32",
}
VOCAB_SIZE = 2000


def train_tokenizer(prefix: Path, text: Path = EVAL_TEXT) -> Path:
    import sentencepiece as spm

    spm.SentencePieceTrainer.Train(
        input=str(text), model_prefix=str(prefix), model_type="bpe", vocab_size=VOCAB_SIZE,
        byte_fallback=True, normalization_rule_name="identity", remove_extra_whitespaces=False,
        add_dummy_prefix=True, split_digits=True, character_coverage=0.9995,
        input_sentence_size=20000, shuffle_input_sentence=False, num_threads=2,
        bos_id=1, eos_id=2, unk_id=0, pad_id=-1, minloglevel=2)
    return prefix.with_suffix(".model")


def random_weights(config: dict, n_vocab: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    d, f = config["hidden_size"], config["intermediate_size"]
    hd = d // config["num_attention_heads"]
    kv = config["num_key_value_heads"] * hd

    def mat(rows, cols):
        return (rng.standard_normal((rows, cols)) / np.sqrt(cols)).astype(np.float32)

    w = {"model.embed_tokens.weight": mat(n_vocab, d), "lm_head.weight": mat(n_vocab, d),
         "model.norm.weight": np.ones(d, np.float32)}
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        if config["architectures"] == ["Qwen2ForCausalLM"]:
            w |= {p + "self_attn.q_proj.bias": 0.1 * mat(1, d)[0], p + "self_attn.k_proj.bias": 0.1 * mat(1, kv)[0],
                  p + "self_attn.v_proj.bias": 0.1 * mat(1, kv)[0]}
        w |= {p + "input_layernorm.weight": (1 + 0.1 * rng.standard_normal(d)).astype(np.float32),
              p + "post_attention_layernorm.weight": (1 + 0.1 * rng.standard_normal(d)).astype(np.float32),
              p + "self_attn.q_proj.weight": mat(d, d), p + "self_attn.k_proj.weight": mat(kv, d),
              p + "self_attn.v_proj.weight": mat(kv, d), p + "self_attn.o_proj.weight": mat(d, d),
              p + "mlp.gate_proj.weight": mat(f, d), p + "mlp.up_proj.weight": mat(f, d),
              p + "mlp.down_proj.weight": mat(d, f)}
    return w


def build(out_dir: Path) -> Path:
    import sentencepiece as spm
    from safetensors.numpy import save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    model = train_tokenizer(out_dir / "tokenizer")
    n_vocab = spm.SentencePieceProcessor(model_file=str(model)).GetPieceSize()
    config = dict(CONFIG, vocab_size=n_vocab, bos_token_id=1, eos_token_id=2)
    (out_dir / "config.json").write_text(json.dumps(config, indent=1))
    (out_dir / "tokenizer_config.json").write_text(json.dumps({"add_bos_token": True, "add_eos_token": False}))
    save_file(random_weights(config, n_vocab), out_dir / "model.safetensors")
    return out_dir
