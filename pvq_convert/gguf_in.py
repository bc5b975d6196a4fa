"""GGUF input: a llama.cpp file read as if it were a Hugging Face checkpoint.

open_gguf gives the converter the same HFModel a safetensors directory gives it: config.json, tokenizer.json and
tokenizer_config.json (with the chat template) rebuilt from the file's metadata in a scratch directory, and every
tensor dequantized by gguf-py when the pipeline asks for it (one at a time, from the file's mmap), in HF's row
layout (llama's Q and K rows put back in HF's order).  Any tensor type gguf-py dequantizes is accepted: F32, F16,
BF16, Q8_0, the k-quants, ...  The vocabulary must be byte-level BPE (`gpt2`), as llama.cpp's qwen2 and llama-3
style files are; SentencePiece vocabularies (`llama`) would need a tokenizer.model and are refused.
"""
from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import ConvertError
from .arch import ARCHES, arch_from_config, hf_tensor_name, unpermute_qk
from .vocab import LLAMA3_SPLIT, QWEN2_SPLIT

# general.architecture -> config.json "architectures"[0] (the first row of arch.ARCHES with that GGUF name)
HF_CLASS = {}
for _a in ARCHES.values():
    HF_CLASS.setdefault(_a.gguf_name, _a.hf_class)

CONTROL, USER_DEFINED, UNUSED = 3, 4, 5     # tokenizer.ggml.token_type values


@dataclass
class GGUFTensorRef:
    tensor: object                  # gguf.ReaderTensor: its bytes are a view of the file's mmap
    shape: tuple[int, ...]          # HF order: (rows, columns)
    qk_heads: int = 0               # llama's Q/K: rows in llama.cpp's order, this many heads

    def read(self, name: str) -> np.ndarray:
        from gguf.quants import dequantize
        w = dequantize(self.tensor.data, self.tensor.tensor_type).astype(np.float32, copy=False).reshape(self.shape)
        return np.ascontiguousarray(unpermute_qk(w, self.qk_heads)) if self.qk_heads else w


def open_gguf(path: Path):
    """The GGUF file at `path` as an hf_model.HFModel (its json files in a scratch directory that lives as long
    as the HFModel)."""
    import gguf
    from gguf.quants import dequantize

    from .hf_model import HFModel

    try:
        reader = gguf.GGUFReader(path)
    except Exception as e:          # gguf-py raises ValueError, struct.error, IndexError... on a bad file
        raise ConvertError(f"{path.name}: not a readable GGUF file, truncated or corrupt ({type(e).__name__}: {e})") from None
    meta = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    arch = meta.get("general.architecture")
    if arch not in HF_CLASS:
        raise ConvertError(f"{path.name}: unsupported architecture {arch!r}; supported: {', '.join(HF_CLASS)}")
    size = path.stat().st_size
    checked_types = set()
    for t in reader.tensors:
        if t.data_offset + t.n_bytes > size:
            raise ConvertError(f"{path.name} is truncated: {t.name} ends at byte {t.data_offset + t.n_bytes} of {size}")
        if t.tensor_type not in checked_types:     # an unsupported type fails here, before any work
            block = gguf.GGML_QUANT_SIZES[t.tensor_type][1]
            try:
                dequantize(np.asarray(t.data).reshape(-1).view(np.uint8)[:block], t.tensor_type)
            except (NotImplementedError, ValueError) as e:
                raise ConvertError(f"{path.name}: {t.name} is {t.tensor_type.name}, which gguf-py cannot "
                                   f"dequantize ({e})") from None
            checked_types.add(t.tensor_type)

    config = hf_config(meta, reader)
    permute = ARCHES[config["architectures"][0]].permute_qk
    tensors = {}
    for t in reader.tensors:
        shape = tuple(int(n) for n in reversed(t.shape))     # GGUF lists the fastest dimension first
        heads = 0
        if permute and t.name.endswith(("attn_q.weight", "attn_k.weight")):
            heads = config["num_attention_heads" if "attn_q" in t.name else "num_key_value_heads"]
        tensors[hf_tensor_name(t.name)] = GGUFTensorRef(t, shape, heads)
    scratch = tempfile.TemporaryDirectory(prefix="pvq-gguf-")
    d = Path(scratch.name)
    for name, obj in (("config.json", config), ("tokenizer.json", tokenizer_json(meta)),
                      ("tokenizer_config.json", tokenizer_config(meta))):
        write_json(d / name, obj)
    return HFModel(d, config, arch_from_config(config), tensors, scratch=scratch, source=path)


def write_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def _f32(x: float) -> float:
    """The shortest decimal that reads back as the same float32 (1e-05, not 9.99999974e-06)."""
    return float(repr(np.float32(x)).removeprefix("np.float32(").removesuffix(")"))


def _key(meta: dict, key: str):
    if key not in meta:
        raise ConvertError(f"the GGUF file lacks {key!r}")
    return meta[key]


def hf_config(meta: dict, reader) -> dict:
    """config.json from the GGUF metadata (the keys llama.cpp's converter writes for llama and qwen2)."""
    arch = meta["general.architecture"]
    hp = lambda key: _key(meta, f"{arch}.{key}")   # noqa: E731
    dim, n_head = hp("embedding_length"), hp("attention.head_count")
    embd = next(t for t in reader.tensors if t.name == "token_embd.weight")
    tok = "tokenizer.ggml."
    config = {
        "architectures": [HF_CLASS[arch]],
        "model_type": arch,
        "hidden_size": dim,
        "intermediate_size": hp("feed_forward_length"),
        "num_hidden_layers": hp("block_count"),
        "num_attention_heads": n_head,
        "num_key_value_heads": meta.get(f"{arch}.attention.head_count_kv", n_head),
        "head_dim": meta.get(f"{arch}.rope.dimension_count", dim // n_head),
        "max_position_embeddings": hp("context_length"),
        "rms_norm_eps": _f32(hp("attention.layer_norm_rms_epsilon")),
        "rope_theta": _f32(meta.get(f"{arch}.rope.freq_base", 10000.0)),
        "vocab_size": int(embd.shape[1]),
        "tie_word_embeddings": all(t.name != "output.weight" for t in reader.tensors),
        "hidden_act": "silu",
    }
    for kind, key in (("bos", "bos_token_id"), ("eos", "eos_token_id"), ("padding", "pad_token_id")):
        if f"{tok}{kind}_token_id" in meta:
            config[key] = meta[f"{tok}{kind}_token_id"]
    config["torch_dtype"] = "float32"
    return config


def _pre_tokenizer(pre: str) -> dict:
    """tokenizer.json's pre_tokenizer for llama.cpp's pre-tokenizer names (vocab.detect_pre_tokenizer's inverse)."""
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    if pre == "gpt-2":
        return byte_level
    if pre == "smollm":
        return {"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True}, byte_level]}
    if pre in ("qwen2", "llama-bpe"):
        split = {"type": "Split", "pattern": {"Regex": QWEN2_SPLIT if pre == "qwen2" else LLAMA3_SPLIT},
                 "behavior": "Isolated", "invert": False}
        return {"type": "Sequence", "pretokenizers": [split, dict(byte_level, use_regex=False)]}
    raise ConvertError(f"the GGUF file's pre-tokenizer {pre!r} is not supported (gpt-2, smollm, qwen2, llama-bpe)")


def tokenizer_json(meta: dict) -> dict:
    """A byte-level BPE tokenizer.json: every used token in the vocabulary, the control and user-defined ones
    also as added tokens (special for control), the file's merges."""
    if meta.get("tokenizer.ggml.model") != "gpt2":
        raise ConvertError(f"the GGUF file's vocabulary is {meta.get('tokenizer.ggml.model')!r}: only byte-level "
                           "BPE ('gpt2') vocabularies can be read from GGUF")
    toks, types = _key(meta, "tokenizer.ggml.tokens"), _key(meta, "tokenizer.ggml.token_type")
    pre = _pre_tokenizer(meta.get("tokenizer.ggml.pre", "gpt-2"))
    # the byte-level step of the pre-tokenizer, which also decodes
    byte_level = pre if pre["type"] == "ByteLevel" else pre["pretokenizers"][-1]
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {"id": i, "content": tok, "single_word": False, "lstrip": False, "rstrip": False,
             "normalized": False, "special": typ == CONTROL}
            for i, (tok, typ) in enumerate(zip(toks, types)) if typ in (CONTROL, USER_DEFINED)
        ],
        "normalizer": None,
        "pre_tokenizer": pre,
        "post_processor": dict(byte_level, trim_offsets=False),
        "decoder": byte_level,
        "model": {
            "type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
            "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
            "vocab": {tok: i for i, (tok, typ) in enumerate(zip(toks, types)) if typ != UNUSED},
            "merges": list(meta.get("tokenizer.ggml.merges", [])),
        },
    }


def tokenizer_config(meta: dict) -> dict:
    toks = meta["tokenizer.ggml.tokens"]
    out = {"tokenizer_class": "GPT2Tokenizer", "add_bos_token": bool(meta.get("tokenizer.ggml.add_bos_token", False))}
    for kind, key in (("bos", "bos_token"), ("eos", "eos_token"), ("unknown", "unk_token"), ("padding", "pad_token")):
        if f"tokenizer.ggml.{kind}_token_id" in meta:
            out[key] = toks[meta[f"tokenizer.ggml.{kind}_token_id"]]
    out["model_max_length"] = meta[f"{meta['general.architecture']}.context_length"]
    if "tokenizer.chat_template" in meta:
        out["chat_template"] = meta["tokenizer.chat_template"]
    return out


def file_model(path: Path, hf_dir: Path):
    """The converter's torch model (torch_model.Model, float32) with the weights of the GGUF file at `path` as the
    runtime sees them (PVQ tensors decoded, the others dequantized, Q/K rows back in HF order) and the online
    Hadamard when the file asks for it; hf_dir: the checkpoint it was converted from (its config).  What
    `pvqrun --pvq-f32-act` is compared with (tests/test_runtime_pvq.py, bench/qwen_coder.py)."""
    import gguf
    import torch

    from .hadamard import hadamard_transform
    from .hf_model import open_model
    from .pvq import dequantize_matrix
    from .pvq_format import SCALE_SUFFIX, read_pvq_tensors
    from .torch_model import Config, Model

    hf = open_model(hf_dir)
    cfg = Config.from_hf(hf)
    reader = gguf.GGUFReader(path)
    pvq = read_pvq_tensors(path)
    glob, blocks = {}, [{} for _ in range(cfg.n_layers)]
    for t in reader.tensors:
        if t.name.endswith(SCALE_SUFFIX):
            continue
        w = dequantize_matrix(pvq[t.name].quantized()).numpy() if t.name in pvq else \
            gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        name = hf_tensor_name(t.name)
        if hf.arch.permute_qk and name.endswith(("q_proj.weight", "k_proj.weight")):
            w = unpermute_qk(w, cfg.n_heads if "q_proj" in name else cfg.n_kv_heads)
        w = torch.from_numpy(np.ascontiguousarray(w, np.float32))
        if name.startswith("model.layers."):
            i, rest = name.removeprefix("model.layers.").split(".", 1)
            blocks[int(i)][rest] = w
        else:
            glob[name.removeprefix("model.")] = w
    field = reader.fields.get("pvq.rotation.ffn_hadamard")
    rotated = field is not None and bool(field.contents())
    return Model(cfg, glob, blocks, ffn_hadamard=hadamard_transform if rotated else None)
