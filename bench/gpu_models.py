"""The GPU check's own test models, made from nothing but the repository (bench/gpu_check.sh): no
download, no model cache.  A byte-level BPE tokenizer (the 256 GPT-2 byte symbols, no merges, the
`smollm` pre-tokenizer) stands in for SmolLM2's; on it:

  smol/     SmolLM2-135M-shaped random weights (30 layers, dim 576, 9 heads / 3 KV heads, n_ff 1536,
            vocab 49152, tied embeddings), converted to f16.gguf and pvq-3.25.gguf (--no-hessian:
            plain nearest-point coding, no calibration; rotation and the FFN Hadamard transform on);
  qwen2/    models/qwen2_fixture.py on the same tokenizer (QKV biases, NEOX RoPE), f16.gguf and pvq-3.25.gguf.

python bench/gpu_models.py OUT_DIR [--layers N] [--vocab V] [--device cpu|cuda]
(--layers / --vocab shrink the SmolLM2 shape for the CPU-only test of this step.)
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SMOL = {"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
        "num_key_value_heads": 3, "vocab_size": 49152, "rope_theta": 100000.0, "max_position_embeddings": 8192,
        "tie_word_embeddings": True, "torch_dtype": "bfloat16"}
EOT = "<|endoftext|>"


def byte_symbols() -> list[str]:
    """GPT-2's printable stand-ins for the 256 byte values (bytes_to_unicode)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    extra = iter(range(256, 512))
    return [chr(b) if b in keep else chr(next(extra)) for b in range(256)]


def write_tokenizer(d: Path) -> None:
    vocab = {s: i for i, s in enumerate(byte_symbols())} | {EOT: 256}
    tok = {"version": "1.0", "added_tokens": [{"id": 256, "content": EOT, "special": True}],
           "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
               {"type": "Digits", "individual_digits": True},
               {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}]},
           "model": {"type": "BPE", "vocab": vocab, "merges": []}}
    d.mkdir(parents=True, exist_ok=True)
    (d / "tokenizer.json").write_text(json.dumps(tok, ensure_ascii=False), encoding="utf-8")
    (d / "tokenizer_config.json").write_text(json.dumps({"bos_token": EOT, "eos_token": EOT,
                                                         "add_bos_token": False}))


def smol_dir(d: Path, layers: int, vocab: int) -> Path:
    from safetensors.numpy import save_file

    from models.spm_fixture import CONFIG, random_weights

    write_tokenizer(d)
    config = CONFIG | SMOL | {"num_hidden_layers": layers, "vocab_size": vocab, "bos_token_id": 256, "eos_token_id": 256}
    (d / "config.json").write_text(json.dumps(config, indent=1))
    w = random_weights(config, vocab)
    del w["lm_head.weight"]  # tied, as SmolLM2's
    save_file({k: v.astype(np.float16) for k, v in w.items()}, d / "model.safetensors")
    return d


def convert(hf: Path, out: Path, *extra: str) -> None:
    cmd = [sys.executable, "-m", "pvq_convert", str(hf), "-q", "-o", str(out), *extra]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=Path(__file__).resolve().parents[1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path)
    p.add_argument("--layers", type=int, default=SMOL["num_hidden_layers"])
    p.add_argument("--vocab", type=int, default=SMOL["vocab_size"])
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where pvq_convert quantizes")
    a = p.parse_args()
    from models import qwen2_fixture

    tok = a.out / "tokenizer"
    write_tokenizer(tok)
    dirs = {"smol": smol_dir(a.out / "smol" / "hf", a.layers, a.vocab),
            "qwen2": qwen2_fixture.build(a.out / "qwen2" / "hf", tok)}
    for name, hf in dirs.items():
        convert(hf, hf.parent / "f16.gguf", "--outtype", "f16")
        convert(hf, hf.parent / "pvq-3.25.gguf", "--bits", "3.25", "--no-hessian", "--device", a.device)
    return 0


if __name__ == "__main__":
    sys.exit(main())
