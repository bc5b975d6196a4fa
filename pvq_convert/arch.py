"""What differs between the supported architectures: tensor names, hyper-parameter keys, Q/K layout.

One row per architecture; adding one touches only this file.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from . import ConvertError

# Hugging Face name (inside a block, after "model.layers.N.") -> GGUF name (after "blk.N.").
BLOCK_TENSORS = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.bias": "attn_v.bias",
    "self_attn.o_proj.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}
GLOBAL_TENSORS = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
    "model.head_mix.weight": "output_mix.weight",  # not in checkpoints: a rotated tied head's (rotate.py)
}
_BLOCK_RE = re.compile(r"model\.layers\.(\d+)\.(.+)")
_GGUF_BLOCK_RE = re.compile(r"blk\.(\d+)\.(.+)")


@dataclass(frozen=True)
class Arch:
    hf_class: str         # config.json "architectures"[0]
    gguf_name: str        # general.architecture
    permute_qk: bool      # llama.cpp rotates pairs (i, i + d/2) for llama: Q and K rows are interleaved
    has_qkv_bias: bool


ARCHES = {
    "LlamaForCausalLM": Arch("LlamaForCausalLM", "llama", permute_qk=True, has_qkv_bias=False),
    "MistralForCausalLM": Arch("MistralForCausalLM", "llama", permute_qk=True, has_qkv_bias=False),
    "Qwen2ForCausalLM": Arch("Qwen2ForCausalLM", "qwen2", permute_qk=False, has_qkv_bias=True),
}


def arch_from_config(config: dict) -> Arch:
    names = config.get("architectures") or []
    if not names:
        raise ConvertError("config.json has no \"architectures\" entry")
    if names[0] not in ARCHES:
        raise ConvertError(f"unsupported architecture {names[0]!r}; supported: {', '.join(ARCHES)}")
    return ARCHES[names[0]]


def gguf_tensor_name(hf_name: str) -> str | None:
    """GGUF name of a Hugging Face tensor, or None for tensors llama.cpp does not use (rotary caches)."""
    if hf_name in GLOBAL_TENSORS:
        return GLOBAL_TENSORS[hf_name]
    m = _BLOCK_RE.fullmatch(hf_name)
    if m and m.group(2) in BLOCK_TENSORS:
        return f"blk.{m.group(1)}.{BLOCK_TENSORS[m.group(2)]}"
    if hf_name.endswith("rotary_emb.inv_freq"):
        return None
    raise ConvertError(f"unexpected tensor {hf_name!r} in the checkpoint")


def hf_tensor_name(gguf_name: str) -> str:
    """Inverse of gguf_tensor_name."""
    for hf, gg in GLOBAL_TENSORS.items():
        if gg == gguf_name:
            return hf
    m = _GGUF_BLOCK_RE.fullmatch(gguf_name)
    for hf, gg in BLOCK_TENSORS.items():
        if m and gg == m.group(2):
            return f"model.layers.{m.group(1)}.{hf}"
    raise ConvertError(f"unexpected GGUF tensor {gguf_name!r}")


def _head_view(w: np.ndarray, n_head: int) -> np.ndarray:
    if w.shape[0] % (2 * n_head):
        raise ConvertError(f"{w.shape[0]} rows do not split into {n_head} heads of even size")
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])


def permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF's Q/K rows (halves of each head rotate together) -> llama.cpp's (adjacent pairs rotate)."""
    return _head_view(w, n_head).swapaxes(1, 2).reshape(w.shape)


def unpermute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """Inverse of permute_qk."""
    v = w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:])
    return v.swapaxes(1, 2).reshape(w.shape)
