"""A readable Llama / Qwen2 forward pass in torch over Hugging Face-layout weights.

Built for the quantization pipeline rather than for speed: the model runs block by block
(`embed` -> `block` for each layer -> `head`), every linear layer's input can be observed through a
hook (for GPTQ Hessians), and the FFN hidden state can be passed through an online Hadamard
transform before `down_proj` (coherence processing, see docs/rotation.md). Float32 or float64.

Weights keep Hugging Face names and layout: Q/K rows are in HF order, so RoPE rotates the two halves
of each head (`rotate_half`), not adjacent pairs as llama.cpp does on its permuted rows.
"""
from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Callable

import torch

from . import ConvertError
from .hf_model import HFModel, open_model

# Linear layers of a block, in the order the forward pass reads them (HF names, without ".weight").
LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
           "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")

# hook(layer, linear name, input rows (T, n_in)): sees the exact input of each linear layer.
LinearHook = Callable[[int, str, torch.Tensor], None]
# out_hook(layer, linear name, output rows (T, n_out)) -> what the block uses as that output.
OutputHook = Callable[[int, str, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Config:
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    ffn_dim: int
    vocab: int
    norm_eps: float
    rope_theta: float
    qkv_bias: bool

    @classmethod
    def from_hf(cls, hf: HFModel) -> "Config":
        c = hf.config
        if c.get("rope_scaling"):
            raise ConvertError(f"rope_scaling {c['rope_scaling']!r} is not supported by the torch model")
        n_heads = hf.hparam("num_attention_heads")
        dim = hf.hparam("hidden_size")
        return cls(dim=dim, n_layers=hf.hparam("num_hidden_layers"), n_heads=n_heads,
                   n_kv_heads=c.get("num_key_value_heads") or n_heads,
                   head_dim=c.get("head_dim") or dim // n_heads, ffn_dim=hf.hparam("intermediate_size"),
                   vocab=hf.hparam("vocab_size"), norm_eps=hf.hparam("rms_norm_eps"),
                   rope_theta=float(c.get("rope_theta", 10000.0)), qkv_bias=hf.arch.has_qkv_bias)


@dataclass
class Model:
    """Weights by HF name: `globals` holds embed_tokens / norm / lm_head (/ head_mix), `blocks[i]` the
    tensors of layer i under their names inside the block (e.g. "self_attn.q_proj.weight"); `blocks` is a
    list, or StreamedBlocks that make each block when a pass reaches it.

    `lm_head` is absent while the head is tied to the embedding; `head_mix` (dim x dim), when present,
    multiplies the normed state before the head (a rotated tied model, rotate.py). `ffn_hadamard`, when set, is applied
    to the FFN hidden state right before down_proj (the runtime's online transform)."""
    config: Config
    globals: dict[str, torch.Tensor]
    blocks: Sequence[dict[str, torch.Tensor]]
    ffn_hadamard: Callable[[torch.Tensor], torch.Tensor] | None = None
    _rope_cache: dict = field(default_factory=dict, repr=False)

    # --- the pieces -----------------------------------------------------------------------------
    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """token ids (T,) -> residual stream (T, dim)."""
        return self.globals["embed_tokens.weight"][tokens]

    def block(self, i: int, x: torch.Tensor, hook: LinearHook | None = None,
              cache: dict | None = None, out_hook: OutputHook | None = None) -> torch.Tensor:
        """One transformer block on sequences x (..., T, dim), causal.

        Without `cache` the positions are 0..T-1.  With one (a dict the caller keeps for this block
        between calls), x continues the sequences whose keys and values the cache holds, and
        this call's keys and values are added to it: incremental decoding."""
        c, w = self.config, self.blocks[i]

        def linear(name: str, inp: torch.Tensor) -> torch.Tensor:
            if hook is not None:
                hook(i, name, inp)
            y = inp @ w[name + ".weight"].T
            bias = w.get(name + ".bias")
            y = y if bias is None else y + bias
            return y if out_hook is None else out_hook(i, name, y)

        *lead, T, _ = x.shape
        past = 0 if cache is None else cache.get("len", 0)
        h = rms_norm(x, w["input_layernorm.weight"], c.norm_eps)
        q = linear("self_attn.q_proj", h).view(*lead, T, c.n_heads, c.head_dim).transpose(-3, -2)
        k = linear("self_attn.k_proj", h).view(*lead, T, c.n_kv_heads, c.head_dim).transpose(-3, -2)
        v = linear("self_attn.v_proj", h).view(*lead, T, c.n_kv_heads, c.head_dim).transpose(-3, -2)
        cos, sin = self._rope(past + T, x.dtype, x.device)
        q, k = apply_rope(q, cos[past:], sin[past:]), apply_rope(k, cos[past:], sin[past:])
        if cache is not None:
            k, v = cache_append(cache, k, v)
        # causal: with a cache, query t (position past + t) sees keys 0 .. past + t
        causal = torch.ones(T, past + T, dtype=torch.bool, device=x.device).tril(past) if past else None
        att = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=causal, is_causal=not past,
                                                               enable_gqa=True)
        x = x + linear("self_attn.o_proj", att.transpose(-3, -2).reshape(*lead, T, c.n_heads * c.head_dim))

        h = rms_norm(x, w["post_attention_layernorm.weight"], c.norm_eps)
        f = torch.nn.functional.silu(linear("mlp.gate_proj", h)) * linear("mlp.up_proj", h)
        if self.ffn_hadamard is not None:
            f = self.ffn_hadamard(f)
        return x + linear("mlp.down_proj", f)

    def head(self, x: torch.Tensor, hook: LinearHook | None = None) -> torch.Tensor:
        """Final norm, the tied head's mix when there is one (rotate.py), output layer: (T, dim) -> logits
        (T, vocab). hook(n_layers, "lm_head", input) sees the output layer's input."""
        g = self.globals
        out = g.get("lm_head.weight")
        h = rms_norm(x, g["norm.weight"], self.config.norm_eps)
        if "head_mix.weight" in g:
            h = h @ g["head_mix.weight"].T
        if hook is not None:
            hook(self.config.n_layers, "lm_head", h)
        return h @ (g["embed_tokens.weight"] if out is None else out).T

    def forward(self, tokens: torch.Tensor | list[int], out_hook: OutputHook | None = None) -> torch.Tensor:
        tokens = torch.as_tensor(tokens, dtype=torch.int64)
        x = self.embed(tokens)
        for i in range(self.config.n_layers):
            x = self.block(i, x, out_hook=out_hook)
        return self.head(x)

    __call__ = forward

    def to(self, device: str | torch.device) -> "Model":
        """The same model with every weight on `device` (streamed blocks are moved as they are made)."""
        return Model(self.config, {k: v.to(device) for k, v in self.globals.items()},
                     map_blocks(lambda b: {k: v.to(device) for k, v in b.items()}, self.blocks), self.ffn_hadamard)

    @property
    def dtype(self) -> torch.dtype:
        return self.globals["embed_tokens.weight"].dtype

    def _rope(self, T: int, dtype: torch.dtype, device) -> tuple[torch.Tensor, torch.Tensor]:
        key = (T, dtype, device)
        if key not in self._rope_cache:
            c = self.config
            # angles in float64 whatever the model dtype, so float32 and float64 runs see the same table
            inv_freq = c.rope_theta ** (-torch.arange(0, c.head_dim, 2, dtype=torch.float64) / c.head_dim)
            ang = torch.outer(torch.arange(T, dtype=torch.float64), inv_freq)
            ang = torch.cat([ang, ang], dim=-1)
            self._rope_cache = {key: (ang.cos().to(dtype).to(device), ang.sin().to(dtype).to(device))}
        return self._rope_cache[key]


class StreamedBlocks(Sequence):
    """`n` blocks, block i made by load(i) when it is asked for; only the last one asked for is kept, so a
    pass over the blocks in order makes each once, and changes to a block last while it is held."""

    def __init__(self, n: int, load: Callable[[int], dict[str, torch.Tensor]]):
        self._n, self._load = n, load
        self._index, self._block = None, None

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        if not 0 <= i < self._n:
            raise IndexError(i)
        if i != self._index:
            self._index, self._block = None, None   # freed before the next one is made
            self._block, self._index = self._load(i), i
        return self._block

    def map(self, fn: Callable[[dict], dict]) -> "StreamedBlocks":
        """Blocks fn(block i), made from this one's loader (not its held block: one block in memory)."""
        return StreamedBlocks(self._n, lambda i: fn(self._load(i)))


def map_blocks(fn: Callable[[dict], dict], blocks: Sequence[dict]) -> Sequence[dict]:
    """fn applied to every block: at once for a list, as each is made for StreamedBlocks."""
    return blocks.map(fn) if isinstance(blocks, StreamedBlocks) else [fn(b) for b in blocks]


def cache_append(cache: dict, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Adds one call's keys and values (..., T, head_dim) to a block's cache -> all of them so far.
    The buffers grow by doubling, so a decoding step writes its own row instead of copying the cache."""
    past, T = cache.get("len", 0), k.shape[-2]
    if "k" not in cache or past + T > cache["k"].shape[-2]:
        for name, new in (("k", k), ("v", v)):
            buf = new.new_empty(*new.shape[:-2], max(2 * past, past + T, 64), new.shape[-1])
            if past:
                buf[..., :past, :] = cache[name][..., :past, :]
            cache[name] = buf
    cache["k"][..., past:past + T, :], cache["v"][..., past:past + T, :] = k, v
    cache["len"] = past + T
    return cache["k"][..., :past + T, :], cache["v"][..., :past + T, :]


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """HF convention: dimension j of a head rotates with dimension j + head_dim/2."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


def load_block(hf: HFModel, i: int, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """The tensors of layer i, read from the safetensors files (one block at a time for big models)."""
    prefix = f"model.layers.{i}."
    names = [n for n in hf.tensors if n.startswith(prefix) and not n.endswith("rotary_emb.inv_freq")]
    if not names:
        raise ConvertError(f"the checkpoint has no tensors for layer {i}")
    return {n[len(prefix):]: torch.from_numpy(hf.load(n)).to(dtype) for n in names}


def load_globals(hf: HFModel, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """embed_tokens / norm / lm_head (absent when tied) by their names without the "model." prefix."""
    out = {}
    for hf_name in ("model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"):
        if hf_name in hf.tensors:
            out[hf_name.removeprefix("model.")] = torch.from_numpy(hf.load(hf_name)).to(dtype)
    for need in ("embed_tokens.weight", "norm.weight"):
        if need not in out:
            raise ConvertError(f"the checkpoint has no model.{need}")
    if "lm_head.weight" not in out and not hf.config.get("tie_word_embeddings", False):
        raise ConvertError("the checkpoint has no lm_head.weight and does not tie the embeddings")
    return out


def narrowest(t: torch.Tensor) -> torch.Tensor:
    """t in float16 or bfloat16 when that holds each of its values exactly (a half-precision checkpoint's
    weights), else t itself."""
    for narrow in (torch.float16, torch.bfloat16):
        n = t.to(narrow)
        if torch.equal(n.to(t.dtype), t):
            return n
    return t


def load_held_model(hf: HFModel, device: str | torch.device = "cpu") -> Model:
    """The whole float32 model for work that needs every block for every token (calib.generated_tokens), in
    about half of float32's memory for a half-precision checkpoint: the blocks are held in their narrowest
    exact type (`narrowest`) and made float32 when a pass reaches them, into buffers that every block reuses.
    The float32 values are the checkpoint's, so it computes what load_model's model does, bit for bit."""
    cfg = Config.from_hf(hf)
    held = [{k: narrowest(v).to(device) for k, v in load_block(hf, i).items()} for i in range(cfg.n_layers)]
    buffers: dict[str, torch.Tensor] = {}

    def widen(i: int) -> dict[str, torch.Tensor]:
        for k, v in held[i].items():
            if k not in buffers or buffers[k].shape != v.shape:
                buffers[k] = torch.empty(v.shape, dtype=torch.float32, device=device)
            buffers[k].copy_(v)
        return {k: buffers[k] for k in held[i]}

    return Model(cfg, {k: v.to(device) for k, v in load_globals(hf).items()}, StreamedBlocks(cfg.n_layers, widen))


def load_model(path, dtype: torch.dtype = torch.float32, streamed: bool = False) -> Model:
    """A whole model in memory, or with `streamed` one whose blocks are read from the checkpoint when a pass
    reaches them (StreamedBlocks: the pipeline's way, one block in memory)."""
    hf = path if isinstance(path, HFModel) else open_model(path)
    cfg = Config.from_hf(hf)
    load = partial(load_block, hf, dtype=dtype)
    blocks = StreamedBlocks(cfg.n_layers, load) if streamed else [load(i) for i in range(cfg.n_layers)]
    return Model(cfg, load_globals(hf, dtype), blocks)


@contextmanager
def one_thread():
    """Torch on one thread, for work made of many small tensor ops (the quantizers, token-by-token
    generation): splitting each op over threads costs more in synchronisation than it gains (with 2
    threads on a busy 2-core machine the PVQ search ran 8x slower than with one; same results)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)
