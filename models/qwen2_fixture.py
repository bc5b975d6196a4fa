"""A small random-weight Qwen2 (QKV biases, NEOX RoPE) with a byte-level BPE tokenizer and the
`qwen2` pre-tokenizer, made from SmolLM2's vocabulary: it exercises the converter's qwen2 path."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from models.spm_fixture import CONFIG, random_weights
from pvq_convert.vocab import QWEN2_SPLIT


def build(out_dir: Path, smollm2_hf_dir: Path) -> Path:
    from safetensors.numpy import save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    tok = json.loads((smollm2_hf_dir / "tokenizer.json").read_text(encoding="utf-8"))
    tok["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": QWEN2_SPLIT}, "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}]}
    (out_dir / "tokenizer.json").write_text(json.dumps(tok, ensure_ascii=False), encoding="utf-8")
    shutil.copy(smollm2_hf_dir / "tokenizer_config.json", out_dir)
    n_vocab = len(tok["model"]["vocab"])
    config = dict(CONFIG, architectures=["Qwen2ForCausalLM"], model_type="qwen2", hidden_size=64,
                  intermediate_size=128, num_attention_heads=2, vocab_size=n_vocab, rope_theta=1000000.0)
    (out_dir / "config.json").write_text(json.dumps(config, indent=1))
    save_file(random_weights(config, n_vocab), out_dir / "model.safetensors")
    return out_dir
