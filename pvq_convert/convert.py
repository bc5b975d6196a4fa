"""Hugging Face checkpoint -> GGUF, unquantized (f32, f16, bf16) or llama.cpp's q8_0."""
from __future__ import annotations

from pathlib import Path

import gguf
from tqdm import tqdm

from . import ConvertError
from .arch import BLOCK_TENSORS, gguf_tensor_name, permute_qk
from .gguf_out import OUTTYPES, atomic_output, tensor_type, write_streaming
from .hf_model import HFModel, open_model
from .vocab import load_vocab


def default_output(model: HFModel, outtype: str) -> Path:
    return model.dir / f"{model.dir.name}-{outtype.upper()}.gguf"


def add_hparams(w: gguf.GGUFWriter, m: HFModel, n_vocab: int) -> None:
    n_embd, n_head = m.hparam("hidden_size"), m.hparam("num_attention_heads")
    head_dim = m.hparam("head_dim", n_embd // n_head)
    scaling = m.config.get("rope_scaling")
    if scaling and scaling.get("rope_type", scaling.get("type")) not in (None, "default"):
        raise ConvertError(f"rope_scaling {scaling!r} is not supported")
    w.add_name(m.dir.name)
    w.add_vocab_size(n_vocab)
    w.add_context_length(m.hparam("max_position_embeddings"))
    w.add_embedding_length(n_embd)
    w.add_block_count(m.hparam("num_hidden_layers"))
    w.add_feed_forward_length(m.hparam("intermediate_size"))
    w.add_head_count(n_head)
    w.add_head_count_kv(m.hparam("num_key_value_heads", n_head))
    w.add_rope_dimension_count(head_dim)
    if head_dim != n_embd // n_head:
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
    w.add_rope_freq_base(float(m.hparam("rope_theta", 10000.0)))
    w.add_layer_norm_rms_eps(float(m.hparam("rms_norm_eps")))


def check_tensors(m: HFModel) -> None:
    """Every tensor the runtime will ask for is there (a clear message now beats a load error later)."""
    required = ["model.embed_tokens.weight", "model.norm.weight"]
    for i in range(m.hparam("num_hidden_layers")):
        required += [f"model.layers.{i}.{k}" for k in BLOCK_TENSORS
                     if k.endswith(".weight") or m.arch.has_qkv_bias]
    missing = [n for n in required if n not in m.tensors]
    if missing:
        raise ConvertError(f"the checkpoint lacks {len(missing)} tensors, e.g. {missing[0]}")


def loader(m: HFModel, name: str):
    """A function returning tensor `name` as float32, in llama.cpp's row layout."""
    n_head = m.hparam("num_attention_heads")
    heads = {"self_attn.q_proj": n_head, "self_attn.k_proj": m.hparam("num_key_value_heads", n_head)}
    kind = name.rsplit(".", 1)[0].split(".", 3)[-1]  # model.layers.N.<kind>.weight
    if m.arch.permute_qk and kind in heads:
        return lambda: permute_qk(m.load(name), heads[kind])
    return lambda: m.load(name)


def convert(model_path: str | Path, outfile: str | Path | None, outtype: str = "f16",
            vocab_pre: str | None = None, progress: bool = True) -> Path:
    if outtype not in OUTTYPES:
        raise ConvertError(f"unknown --outtype {outtype!r}; choose from {', '.join(OUTTYPES)}")
    m = open_model(model_path)
    check_tensors(m)
    n_vocab = m.tensors["model.embed_tokens.weight"].shape[0]
    vocab = load_vocab(m.dir, n_vocab, vocab_pre)
    out = Path(outfile) if outfile else default_output(m, outtype)

    writer = gguf.GGUFWriter(None, m.arch.gguf_name)
    add_hparams(writer, m, n_vocab)
    writer.add_file_type(OUTTYPES[outtype][1])
    vocab.write(writer)
    tensors = []
    for name, ref in m.tensors.items():
        gname = gguf_tensor_name(name)
        if gname is not None:
            tensors.append((gname, ref.shape, tensor_type(outtype, ref.shape), loader(m, name)))

    with atomic_output(out) as tmp, tqdm(total=len(tensors), unit="tensor", disable=not progress,
                                         desc=f"writing {out.name}") as bar:
        write_streaming(tmp, writer, tensors, progress=lambda name: bar.update())
    return out
