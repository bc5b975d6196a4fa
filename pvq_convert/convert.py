"""Hugging Face checkpoint -> GGUF, unquantized (f32, f16, bf16) or llama.cpp's q8_0."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import gguf
import numpy as np
from tqdm import tqdm

from . import ConvertError
from .arch import BLOCK_TENSORS, gguf_tensor_name, permute_qk
from .gguf_out import OUTTYPES, atomic_output, encoded, tensor_type, write_streaming
from .hf_model import HFModel, open_model
from .vocab import load_vocab


def default_output(model: HFModel, outtype: str) -> Path:
    """<model dir>/<name>-<TAG>.gguf, or for a GGUF input <its folder>/<its stem>-<TAG>.gguf."""
    return (model.source.parent if model.source else model.dir) / f"{model.name}-{outtype.upper()}.gguf"


def add_hparams(w: gguf.GGUFWriter, m: HFModel, n_vocab: int) -> None:
    n_embd, n_head = m.hparam("hidden_size"), m.hparam("num_attention_heads")
    head_dim = m.hparam("head_dim", n_embd // n_head)
    scaling = m.config.get("rope_scaling")
    if scaling and scaling.get("rope_type", scaling.get("type")) not in (None, "default"):
        raise ConvertError(f"rope_scaling {scaling!r} is not supported")
    w.add_name(m.name)
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


def llama_cpp_rows(m: HFModel, name: str):
    """A function putting the rows of HF tensor `name` in llama.cpp's order (Q/K permuted for llama),
    for float weights as for PVQ rows and their scales (permute_qk only moves whole rows)."""
    n_head = m.hparam("num_attention_heads")
    heads = {"self_attn.q_proj": n_head, "self_attn.k_proj": m.hparam("num_key_value_heads", n_head)}
    kind = name.rsplit(".", 1)[0].split(".", 3)[-1]  # model.layers.N.<kind>.weight
    if m.arch.permute_qk and kind in heads:
        return lambda rows: permute_qk(rows, heads[kind])
    return lambda rows: rows


def loader(m: HFModel, name: str):
    """A function returning tensor `name` as float32, in llama.cpp's row layout."""
    order = llama_cpp_rows(m, name)
    return lambda: order(m.load(name))


def file_tensors(m: HFModel, outtype: str) -> list:
    """The unquantized path: every tensor of the checkpoint, encoded to the output type."""
    tensors = []
    for name, ref in m.tensors.items():
        gname = gguf_tensor_name(name)
        if gname is not None:
            qtype = tensor_type(outtype, ref.shape)
            tensors.append((gname, ref.shape, qtype, encoded(loader(m, name), qtype)))
    return tensors


def quantized_tensors(m: HFModel, qm, outtype: str) -> tuple[list, dict]:
    """The quantized path: the (rotated) model's tensors; PVQ-coded linear layers as PVQ rows plus
    their row scales and gain-level keys, everything else encoded to the output type (a block's tensors
    read back from qm's spill when the writer reaches them)."""
    from .pvq_format import VERSION, VERSION_KEY, pvq_entries

    # HF name -> (shape, the tensor when asked for): the blocks' tensors are read back one at a time
    named = {("lm_head.weight" if k == "lm_head.weight" else f"model.{k}"): (tuple(v.shape), lambda v=v: v)
             for k, v in qm.globals.items()}
    named |= {name: (shape, lambda name=name: qm.tensor(name)) for name, shape in qm.shapes.items()}
    tensors, keys = [], {VERSION_KEY: VERSION} if qm.codes else {}
    for name, (shape, tensor) in named.items():
        gname, order = gguf_tensor_name(name), llama_cpp_rows(m, name)
        if name in qm.codes:
            entries, levels = pvq_entries(gname, qm.codes[name])
            keys |= levels
            (pname, rows, ptype), (sname, scales, _) = entries
            tensors.append((pname, shape, ptype, lambda r=order(rows): r))
            tensors.append((sname, scales.shape, gguf.GGMLQuantizationType.F16, lambda s=order(scales): s))
        else:
            # the mix is fp16 in the torch model too (rotate.py): stored as it is, whatever the outtype
            qtype = gguf.GGMLQuantizationType.F16 if name == "model.head_mix.weight" else tensor_type(outtype, shape)
            tensors.append((gname, shape, qtype, encoded(lambda t=tensor, order=order: order(t().float().numpy()), qtype)))
    return tensors, keys


def convert(model_path: str | Path, outfile: str | Path | None, outtype: str = "f16",
            vocab_pre: str | None = None, progress: bool = True, quant=None,
            log: Callable[[str], None] | None = None, quantized=None) -> Path:
    """Write `model_path` as GGUF. quant: a quantize.QuantOptions to quantize the linear layers
    (then `outtype` is the type of the tensors that stay unquantized). log: receives the summary of
    a quantized conversion (per-tensor rates, exact bits per weight). quantized: the result of
    quantize.quantize_checkpoint for `quant` when the caller has it already (benchmarks)."""
    if outtype not in OUTTYPES:
        raise ConvertError(f"unknown --outtype {outtype!r}; choose from {', '.join(OUTTYPES)}")
    m = open_model(model_path)
    check_tensors(m)
    n_vocab = m.tensors["model.embed_tokens.weight"].shape[0]
    vocab = load_vocab(m.dir, n_vocab, vocab_pre)
    out = Path(outfile) if outfile else default_output(m, outtype if quant is None else quant.tag())
    if m.source and out.resolve() == m.source.resolve():
        raise ConvertError(f"the output {out} is the input file: give another -o")
    if quant is None:
        tensors, keys = file_tensors(m, outtype), {}
    else:
        from .quantize import quantize_checkpoint
        qm = quantized or quantize_checkpoint(m, quant, progress)
        tensors, keys = quantized_tensors(m, qm, outtype)
        keys |= qm.metadata

    writer = gguf.GGUFWriter(None, m.arch.gguf_name)
    add_hparams(writer, m, n_vocab)
    writer.add_file_type(OUTTYPES[outtype][1])
    vocab.write(writer)
    for key, value in keys.items():
        writer.add_key_value(key, value, *_value_type(value))
    with atomic_output(out) as tmp, tqdm(total=len(tensors), unit="tensor", disable=not progress,
                                         desc=f"writing {out.name}") as bar:
        write_streaming(tmp, writer, tensors, progress=lambda name: bar.update())
    if quant is not None and log is not None:
        log(bits_summary(qm, checkpoint_parameters(m), out, outtype))
    if quant is not None and quantized is None:
        qm.work.remove()        # the steps it kept are in the file now
    return out


def checkpoint_parameters(m: HFModel) -> int:
    """The parameters of the checkpoint, counted as it stores them (a tied embedding once)."""
    return sum(int(np.prod(ref.shape)) for name, ref in m.tensors.items() if gguf_tensor_name(name) is not None)


def bits_summary(qm, params: int, out: Path, outtype: str) -> str:
    """Per-tensor PVQ rates and the exact bits per weight of the quantized layers and of the file."""
    from .allocate import describe
    from .pvq_format import coded_bits, layout_of
    from .quantize import VOCAB_TENSORS

    lines = []
    linear = [name for name in qm.codes if name not in VOCAB_TENSORS]
    if linear:
        rates = qm.rates or {name: round((lay := layout_of(qm.codes[name])).field_bits / lay.D, 2) for name in linear}
        n, bits = coded_bits(qm.codes[name] for name in linear)
        lines += ["PVQ rates per tensor (nominal bits per weight):", describe(rates),
                  f"quantized linear weights: {n} weights, {bits / n:.4f} bits per weight "
                  f"(fields and fp16 row scales)"]
    vocab = [name for name in VOCAB_TENSORS if name in qm.codes]
    if vocab:
        n, bits = coded_bits(qm.codes[name] for name in vocab)
        lines.append(f"vocabulary matrices ({', '.join(gguf_tensor_name(v) for v in vocab)}): {n} weights, "
                     f"{bits / n:.4f} bits per weight")
    size = out.stat().st_size
    lines.append(f"whole file: {size} bytes for the checkpoint's {params} parameters, {size * 8 / params:.4f} "
                 f"bits per parameter (vocabulary {'PVQ' if vocab else outtype}, norms f32)")
    return "\n".join(lines)


def _value_type(value) -> tuple:
    """GGUF value type of the pvq.* metadata values: bool, uint32, float32, string; arrays of ints
    (the Hadamard base matrix) are int8, other arrays float32 (gain levels)."""
    V = gguf.GGUFValueType
    if isinstance(value, bool):
        return (V.BOOL,)
    if isinstance(value, int):
        return (V.UINT32,)
    if isinstance(value, float):
        return (V.FLOAT32,)
    if isinstance(value, str):
        return (V.STRING,)
    return V.ARRAY, V.INT8 if all(isinstance(v, int) for v in value) else V.FLOAT32
