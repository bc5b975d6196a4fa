"""Layer-by-layer quantization of a whole model (GPTQ-style).

For each block, in order: run the calibration sequences through it, collect H = X^T X for the input
of each group of linear layers that share an input, quantize those layers, and run again so the
next group (and the next block) sees the outputs of the already-quantized layers. Sharing inputs:
q/k/v read the attention norm's output, gate/up the FFN norm's; o_proj and down_proj have their own.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from . import ConvertError
from .calib import calibration_tokens
from .gptq import gptq
from .hf_model import HFModel
from .pvq import Quantized, dequantize_matrix, quantize_matrix
from .pvq_format import Layout
from .quantizers import PVQQuantizer, ScalarQuantizer
from .rotate import Rotation, gguf_metadata, rotate_model
from .torch_model import Model, load_model

# Linear layers that read the same input, in the order the block computes them.
INPUT_GROUPS = (("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), ("self_attn.o_proj",),
                ("mlp.gate_proj", "mlp.up_proj"), ("mlp.down_proj",))


@dataclass
class Method:
    """What to do with each linear weight: `pvq` (with or without the Hessian), scalar `gptq`, or
    scalar `rtn`. Scalar methods use `scalar_bits` per weight plus an fp16 scale per 64."""
    name: str = "pvq"
    layout: Layout | None = None
    hessian: bool = True
    scalar_bits: int = 3
    scalar_block: int = 64
    damp: float = 0.01

    @property
    def needs_hessian(self) -> bool:
        return self.name == "gptq" or (self.name == "pvq" and self.hessian)

    def quantize(self, W: torch.Tensor, H: torch.Tensor) -> tuple[torch.Tensor, Quantized | None]:
        """-> (the weights as the runtime will see them, the PVQ codes or None)."""
        if self.name == "pvq":
            if not self.hessian:
                q = quantize_matrix(W, self.layout.D, self.layout.K, self.layout.gain_bits)
                return dequantize_matrix(q), q
            quantizer = PVQQuantizer(W, self.layout)
            Wq = gptq(W, H, quantizer, self.damp)
            return Wq.float(), quantizer.result()
        scalar = ScalarQuantizer(self.scalar_bits, self.scalar_block)
        if self.name == "rtn":
            return scalar.rtn(W), None
        return gptq(W, H, scalar, self.damp).float(), None


@dataclass
class QuantizedModel:
    model: Model                                    # with the quantized weights swapped in
    codes: dict[str, Quantized] = field(default_factory=dict)   # HF tensor name -> PVQ codes
    metadata: dict = field(default_factory=dict)    # GGUF keys the runtime needs (rotation)


@dataclass
class QuantOptions:
    """Everything `python -m pvq_convert --bits ...` decides."""
    method: Method
    calib: Path | None       # None: text the model generates itself (calib.generated_tokens)
    n_seq: int = 16
    seq_len: int = 512
    seed: int = 0
    rotate: bool = True      # coherence processing (rotate.py) before quantizing

    def tag(self) -> str:
        m = self.method
        if m.name == "pvq":
            return f"PVQ{m.layout.D}-{m.layout.K}-{m.layout.gain_bits}" + ("" if m.hessian else "-nohess")
        return f"{m.name.upper()}{m.scalar_bits}"


def quantize_checkpoint(hf: HFModel, opts: QuantOptions, progress: bool = True) -> QuantizedModel:
    """Load the checkpoint, calibrate, quantize every linear layer."""
    D = opts.method.layout.D if opts.method.name == "pvq" else opts.method.scalar_block
    for name, ref in hf.tensors.items():
        if name.endswith("proj.weight") and ref.shape[-1] % D:
            raise ConvertError(f"{name} has rows of {ref.shape[-1]} weights, not a multiple of the group size {D}")
    model = load_model(hf)
    calib = None
    if opts.method.needs_hessian:
        calib = calibration_tokens(hf.dir, opts.calib, opts.n_seq, opts.seq_len, opts.seed, model)
    metadata = {}
    if opts.rotate:
        rotation = Rotation(seed=opts.seed)
        model = rotate_model(model, rotation)
        metadata = gguf_metadata(rotation, model.config.ffn_dim)
    qm = quantize_model(model, calib, opts.method, progress)
    qm.metadata = metadata
    return qm


def quantize_model(model: Model, calib: torch.Tensor, method: Method, progress: bool = True) -> QuantizedModel:
    """Quantize every linear layer of `model` in place. calib: (n_seq, seq_len) token ids, or None
    for the methods that need no Hessian."""
    xs = [model.embed(seq) for seq in calib] if method.needs_hessian else []
    out = QuantizedModel(model)
    bar = tqdm(total=model.config.n_layers * len(INPUT_GROUPS), unit="step", disable=not progress,
               desc="quantizing")
    for i in range(model.config.n_layers):
        for group in INPUT_GROUPS:
            H = _input_hessian(model, i, xs, group[0]) if xs else None
            for name in group:
                key = f"{name}.weight"
                with one_thread():
                    Wq, codes = method.quantize(model.blocks[i][key], H)
                model.blocks[i][key] = Wq.to(model.dtype)
                if codes is not None:
                    out.codes[f"model.layers.{i}.{key}"] = codes
            bar.update()
        xs = [model.block(i, x) for x in xs]
        bar.set_postfix(block=i)
    bar.close()
    return out


@contextmanager
def one_thread():
    """Torch on one thread. The quantizers run thousands of small tensor ops per layer: splitting
    each over threads costs more in synchronisation than it gains (with 2 threads on a busy 2-core
    machine the PVQ search ran 8x slower than with one; the results are the same)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


class _Captured(Exception):
    """Raised by the Hessian hook once it has its input: the rest of the block is not needed."""


def _input_hessian(model: Model, i: int, xs: list[torch.Tensor], linear: str) -> torch.Tensor:
    """sum over calibration tokens of x x^T for the input x of `linear` in block i (float64).
    Each pass stops at `linear`: q/k/v need only the norm, gate/up only the attention half."""
    H = None

    def hook(layer, name, inp):
        nonlocal H
        if name == linear:
            x = inp.to(torch.float64)
            H = x.T @ x if H is None else H + x.T @ x
            raise _Captured

    for x in xs:
        try:
            model.block(i, x, hook)
        except _Captured:
            pass
    return H
