"""Layer-by-layer quantization of a whole model (GPTQ-style).

For each block, in order: run the calibration sequences through it, collect H = X^T X for the input
of each group of linear layers that share an input, quantize those layers, and run again so the
next group (and the next block) sees the outputs of the already-quantized layers. Sharing inputs:
q/k/v read the attention norm's output, gate/up the FFN norm's; o_proj and down_proj have their own.

Every phase is block by block (docs/pipeline.md, "Peak memory"): each block is read from the checkpoint
and rotated when a pass reaches it, the quantized blocks wait on disk (stream.Spill), and between blocks
only the calibration activations are carried.  Only the self-generated calibration text holds the whole
model.
"""
from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

import torch
from tqdm import tqdm

from . import ConvertError, source_digest
from .allocate import RATES, Tensor, allocate, fixed_rates, tensor_errors
from .calib import calibration_tokens
from .gptq import gptq, inverse_hessian_factor
from .hf_model import HFModel
from .pvq import Quantized, dequantize_matrix, quantize_matrix
from .pvq_format import Layout
from .pvq_presets import preset
from .quantizers import PVQQuantizer, ScalarQuantizer
from .rotate import Rotation, gguf_metadata, rotate_model
from .row_workers import RowWorkers
from .stream import Spill, WorkDir, streamed_backward
from .torch_model import Config, Model, StreamedBlocks, load_held_model, load_model, one_thread
from .tune import log_probs, tune_scales

# The vocabulary matrices (HF names): the token embedding and, when the checkpoint has one, the output layer.
VOCAB_TENSORS = ("model.embed_tokens.weight", "lm_head.weight")

# Linear layers that read the same input, in the order the block computes them.
INPUT_GROUPS = (("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), ("self_attn.o_proj",),
                ("mlp.gate_proj", "mlp.up_proj"), ("mlp.down_proj",))


@dataclass
class Method:
    """What to do with each linear weight: `pvq` (with or without the Hessian), scalar `gptq`, or
    scalar `rtn`. Scalar methods use `scalar_bits` per weight plus an fp16 scale per 64. PVQ codes
    every tensor with `layout`, unless `bits` asks for a per-tensor allocation (allocate.py) to that
    average, with `bits_map` ({tensor pattern: rate}) fixing some rates.  PVQ with the Hessian then
    tunes its row scales for `tune_epochs` passes over the calibration text (tune.py).  `vocab_layout`
    codes the vocabulary matrices (the embedding, tied to the head in a rotated model, and an untied
    lm_head) with PVQ as well; None keeps them in the file's unquantized type."""
    name: str = "pvq"
    layout: Layout | None = None
    hessian: bool = True
    scalar_bits: int = 3
    scalar_block: int = 64
    damp: float = 0.01
    bits: float | None = None
    bits_map: dict = field(default_factory=dict)
    tune_epochs: int = 0
    vocab_layout: Layout | None = None

    @property
    def codes_vocab(self) -> bool:
        return self.name == "pvq" and self.vocab_layout is not None

    @property
    def tunes(self) -> bool:
        return self.name == "pvq" and self.hessian and self.tune_epochs > 0

    @property
    def needs_hessian(self) -> bool:
        return self.name == "gptq" or (self.name == "pvq" and self.hessian)

    @property
    def allocates(self) -> bool:
        return self.name == "pvq" and self.bits is not None

    def quantize(self, W: torch.Tensor, H: torch.Tensor, layout: Layout | None = None, U: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, Quantized | None]:
        """-> (the weights as the runtime will see them, the PVQ codes or None).  U: H's factor (gptq.gptq)."""
        if self.name == "pvq":
            lay = layout or self.layout
            if not self.hessian:
                q = quantize_matrix(W, lay.D, lay.K, lay.gain_bits)
                return dequantize_matrix(q), q
            quantizer = PVQQuantizer(W, lay)
            Wq = gptq(W, H, quantizer, self.damp, U=U)
            return Wq.float(), quantizer.result()
        scalar = ScalarQuantizer(self.scalar_bits, self.scalar_block)
        if self.name == "rtn":
            return scalar.rtn(W), None
        return gptq(W, H, scalar, self.damp, U=U).float(), None


class CodeStore(Mapping):
    """HF tensor name -> its PVQ codes (pvq.Quantized), parked in a Spill and read back one tensor at a time: in
    int64 the codes are 16 bytes per group, 2 bytes per weight at 3.25 bpw, more than the model in float16.  A
    name in `tuned` comes back with its row scales times the factors the scale tuning gave them."""

    def __init__(self, spill: Spill, tuned: dict[str, torch.Tensor]):
        self.spill, self.tuned, self.names = spill, tuned, []

    def __setitem__(self, name: str, q: Quantized) -> None:
        self.spill[name] = q.state()
        self.adopt([name])

    def adopt(self, names: list[str]) -> None:
        """Names whose codes the spill holds already (a conversion that goes on)."""
        self.names += [n for n in names if n not in self.names]

    def __getitem__(self, name: str) -> Quantized:
        if name not in self.names:
            raise KeyError(name)
        q = Quantized.of_state(self.spill[name])
        factor = self.tuned.get(name)
        if factor is not None:
            q.scale = (q.scale.float() * factor.to(q.scale.device)).half()
        return q

    def __contains__(self, name) -> bool:
        return name in self.names

    def __iter__(self):
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)


@dataclass
class QuantizedModel:
    """The quantized model: `globals` in memory (a coded vocabulary decoded), every block's tensors parked in
    `spill` under their HF names (the coded weights decoded) and read back a block at a time, the codes parked
    too (`codes`); `tuned` holds the row factors the scale tuning gave each code (the spills keep what GPTQ
    wrote, so that a conversion that goes on after an interruption reads it unchanged)."""
    config: Config
    globals: dict[str, torch.Tensor]
    ffn_hadamard: object = None
    codes: CodeStore | None = None      # HF tensor name -> PVQ codes (default: in a spill of `work`)
    metadata: dict = field(default_factory=dict)    # GGUF keys the runtime needs (rotation)
    rates: dict[str, float] = field(default_factory=dict)      # HF tensor name -> PVQ rate, when allocated
    spill: Spill = field(default_factory=Spill)
    work: WorkDir | None = None     # the directory the spill is in, removed once the file is written
    tuned: dict[str, torch.Tensor] = field(default_factory=dict)   # HF tensor name -> its rows' factors
    block_keys: list[list[str]] = field(default_factory=list)   # each block's tensor names, in its order
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)  # HF name -> shape, of the blocks' tensors

    def __post_init__(self):
        if self.codes is None:
            self.codes = CodeStore(self.work.spill("codes") if self.work else Spill(), self.tuned)

    def keep_block(self, block: dict[str, torch.Tensor]) -> None:
        """Park the next block (its tensors as the quantized model has them)."""
        prefix = f"model.layers.{len(self.block_keys)}."
        for key, t in block.items():
            self.spill[prefix + key], self.shapes[prefix + key] = t, tuple(t.shape)
        self.block_keys.append(list(block))

    def tensor(self, name: str) -> torch.Tensor:
        """A block's tensor by HF name; a coded weight whose scales the tuning changed is decoded now, and a bias
        after it (Qwen2's q/k/v) takes its factor, since the factor scaled the output."""
        if name in self.tuned:
            return dequantize_matrix(self.codes[name])
        t = self.spill[name]
        factor = self.tuned.get(name.removesuffix("bias") + "weight") if name.endswith(".bias") else None
        return t if factor is None else t * factor.to(t)

    def block(self, i: int) -> dict[str, torch.Tensor]:
        return {key: self.tensor(f"model.layers.{i}.{key}") for key in self.block_keys[i]}

    def retune(self, name: str, factor: torch.Tensor) -> None:
        """The codes of `name` get their row scales times `factor` (tune.py)."""
        self.tuned[name] = factor.detach()

    @property
    def model(self) -> Model:
        """The quantized model as a torch Model, its blocks read back as a pass reaches them."""
        return Model(self.config, self.globals, StreamedBlocks(len(self.block_keys), self.block), self.ffn_hadamard)


@dataclass
class QuantOptions:
    """Everything `python -m pvq_convert --bits ...` decides."""
    method: Method
    calib: Path | None       # None: text the model generates itself (calib.generated_tokens)
    n_seq: int = 16
    seq_len: int = 512
    seed: int = 0
    rotate: bool = True      # coherence processing (rotate.py) before quantizing
    n_generated: int = 0     # with a calib file: how many of the n_seq sequences the model generates instead
    device: str = "cpu"      # where the model runs and the quantizers work (the PVQ search in Triton on CUDA)
    work_dir: Path | None = None   # where the finished steps are kept (stream.WorkDir); None: a temporary one

    def tag(self) -> str:
        m = self.method
        if m.allocates:
            return f"PVQ-mix{m.bits:g}" + ("" if m.hessian else "-nohess")
        if m.name == "pvq":
            return f"PVQ{m.layout.D}-{m.layout.K}-{m.layout.gain_bits}" + ("" if m.hessian else "-nohess")
        return f"{m.name.upper()}{m.scalar_bits}"


def work_stamp(hf: HFModel, opts: QuantOptions) -> dict:
    """What a work directory's steps depend on: the converter's code, the checkpoint's files, the options, the
    calibration text."""
    files = {ref.file for ref in hf.tensors.values() if hasattr(ref, "file")} | ({hf.source} if hf.source else set())
    try:
        calib = hashlib.sha256(Path(opts.calib).read_bytes()).hexdigest() if opts.calib else None
    except OSError:
        calib = None        # calibration_tokens says why it cannot be read
    return {"converter": source_digest(), "checkpoint": {str(Path(f).resolve()): [f.stat().st_size, f.stat().st_mtime_ns]
                                                          for f in sorted(files)},
            "options": repr(replace(opts, work_dir=None, calib=Path(opts.calib).resolve() if opts.calib else None)),
            "calibration text": calib}


def quantize_checkpoint(hf: HFModel, opts: QuantOptions, progress: bool = True) -> QuantizedModel:
    """Load the checkpoint, calibrate, allocate the rates, quantize every linear layer; each finished step is kept
    in the work directory (opts.work_dir), and the steps a directory already holds are not done again."""
    m = opts.method
    if m.name == "pvq":
        block = max(preset(r).block_size for r in RATES) if m.allocates else m.layout.block_size
    else:
        block = m.scalar_block
    for name, ref in hf.tensors.items():
        coded = name.endswith("proj.weight") or (m.codes_vocab and name in VOCAB_TENSORS)
        if coded and ref.shape[-1] % block:
            raise ConvertError(f"{name} has rows of {ref.shape[-1]} weights, not a multiple of {block}, the block "
                               f"of weights that {opts.tag()} packs together")
    if m.allocates:
        tensors = linear_tensors(hf)
        fixed_rates(tensors, m.bits, m.bits_map)        # bad requests fail before the long work
    work = WorkDir(opts.work_dir, work_stamp(hf, opts))
    if work.resumed and progress:
        print(f"going on with the conversion kept in {work.path}")
    calib = None
    if m.needs_hessian or m.allocates:
        calib = work.kept("calibration", lambda: calibration_tokens(
            hf.dir, opts.calib, opts.n_seq, opts.seq_len, opts.seed, lambda: load_held_model(hf, opts.device),
            progress, opts.n_generated))
    model = load_model(hf, streamed=True).to(opts.device)
    metadata = {}
    if opts.rotate:
        rotation = Rotation(seed=opts.seed)
        model = rotate_model(model, rotation, tie_head=m.codes_vocab)
        metadata = gguf_metadata(rotation, model.config.ffn_dim)
    rates = {}
    if m.allocates:
        rates = work.kept("rates", lambda: allocate(tensors, measure_errors(model, calib, progress), m.bits, m.bits_map))
    head_hessian = m.codes_vocab and m.hessian and calib is not None
    targets, H_head = reference_pass(model, calib, m.tunes, head_hessian, progress, work) \
        if m.tunes or head_hessian else (None, None)
    qm = quantize_model(model, calib if m.needs_hessian else None, m, progress, rates, H_head, work)
    if m.tunes:
        tune_scales(qm, calib, targets, m.tune_epochs, progress=progress, work=work)
    qm.globals = {k: v.to("cpu") for k, v in qm.globals.items()}
    qm.metadata, qm.rates = metadata, rates
    return qm


def linear_tensors(hf: HFModel) -> list[Tensor]:
    """The linear weights that PVQ codes, in block order."""
    names = [f"model.layers.{i}.{name}.weight" for i in range(hf.hparam("num_hidden_layers"))
             for group in INPUT_GROUPS for name in group]
    return [Tensor(n, *hf.tensors[n].shape) for n in names]


def measure_errors(model: Model, calib: torch.Tensor, progress: bool = True) -> dict[str, dict[float, float]]:
    """allocate.tensor_errors for every linear weight, with the Hessians and output Fisher diagonals of the
    unquantized model (block-streamed: the Hessians of one block at a time)."""
    fisher = output_fisher(model, calib, progress)
    xs = [model.embed(seq) for seq in calib]
    errors = {}
    leaders = {group[0]: group for group in INPUT_GROUPS}
    for i in tqdm(range(model.config.n_layers), unit="block", disable=not progress, desc="sensitivity"):
        Hs = {}

        def hook(layer, name, inp):
            if name in leaders:
                x = inp.to(torch.float64)
                Hs[name] = x.T @ x + Hs[name] if name in Hs else x.T @ x

        xs = [model.block(i, x, hook) for x in xs]
        with one_thread():
            for leader, group in leaders.items():
                for name in group:
                    full = f"model.layers.{i}.{name}.weight"
                    errors[full] = tensor_errors(model.blocks[i][f"{name}.weight"], Hs[leader], fisher[full], seed=i)
    return errors


def output_fisher(model: Model, calib: torch.Tensor, progress: bool = True) -> dict[str, torch.Tensor]:
    """For every linear weight (HF name), the diagonal of the Fisher information of the model's next-token
    distribution in that layer's output space: the sum over calibration tokens of (d log p(y) / d out_r)^2
    per output row r, with y drawn from the model itself.  An output error e (e_r^2 summed over the same
    tokens) then costs about sum_r fisher_r e_r^2 / (2 tokens^2) nats of KL divergence per token: how much
    an error in this layer reaches the logits.  Block-streamed (stream.streamed_backward)."""
    out: dict[str, torch.Tensor] = {}
    gen = torch.Generator(device=calib.device).manual_seed(0)

    def sampled_log_prob(logits, rows):
        logp = torch.log_softmax(logits.float(), -1)
        y = torch.multinomial(logp.detach().exp(), 1, generator=gen)
        return logp.gather(-1, y).sum()

    for seq in tqdm(calib, unit="seq", disable=not progress, desc="fisher"):
        probes = {}

        def probe(layer, name, y):  # a zero added to the output: its gradient is d log p / d output
            probes[f"model.layers.{layer}.{name}.weight"] = p = torch.zeros_like(y, requires_grad=True)
            return y + p

        streamed_backward(model, seq, sampled_log_prob, probe)
        for name, p in probes.items():
            g = p.grad.to(torch.float64).pow(2).sum(0)
            out[name] = out[name] + g if name in out else g
    return out


def quantize_model(model: Model, calib: torch.Tensor | None, method: Method, progress: bool = True,
                   rates: dict[str, float] | None = None, head_hessian: torch.Tensor | None = None,
                   work: WorkDir | None = None) -> QuantizedModel:
    """Quantize every linear layer of `model`, one block at a time (and the vocabulary matrices first, with
    method.vocab_layout, in `model.globals`). calib: (n_seq, seq_len) token ids, or None for the methods that
    need no Hessian. rates: PVQ rate by HF tensor name (else method.layout). head_hessian: quantize_vocab's.
    work: where each finished block is kept (with the calibration activations after it), and the blocks found
    there are taken as they are."""
    work = work or WorkDir(None, {})
    out = QuantizedModel(model.config, model.globals, model.ffn_hadamard, spill=work.spill("blocks"), work=work)
    workers = RowWorkers(torch.get_num_threads()) if _wants_workers(model) else None
    with workers or contextlib.nullcontext():
        if method.codes_vocab:
            def code_vocab():
                codes = quantize_vocab(model, head_hessian, method, workers, progress)
                for name, q in codes.items():
                    out.codes[name] = q
                return {"coded": list(codes), "weights": {k: model.globals[k.removeprefix("model.")] for k in codes}}
            vocab = work.kept("vocabulary", code_vocab)
            out.codes.adopt(vocab["coded"])
            model.globals |= {k.removeprefix("model."): w for k, w in vocab["weights"].items()}
        done = 0
        while work.has(f"block.{done}"):
            kept = work.load(f"block.{done}")
            out.codes.adopt(kept["coded"])
            out.block_keys.append(kept["keys"])
            out.shapes |= kept["shapes"]
            done += 1
        if calib is None:
            xs = []
        else:
            xs = work.load(f"inputs.{done}") if done else [model.embed(seq) for seq in calib]
        bar = tqdm(total=model.config.n_layers * len(INPUT_GROUPS), initial=done * len(INPUT_GROUPS), unit="step",
                   disable=not progress, desc="quantizing")
        for i in range(done, model.config.n_layers):
            block = model.blocks[i]     # held until the next block is asked for: it gets the quantized weights
            for group in INPUT_GROUPS:
                H = _input_hessian(model, i, xs, group[0]) if xs else None
                keys = [f"{name}.weight" for name in group]
                layouts = [preset(rates[f"model.layers.{i}.{k}"]) if rates else None for k in keys]
                done = quantize_group(method, [block[k] for k in keys], H, layouts, workers)
                for key, (Wq, codes) in zip(keys, done):
                    block[key] = Wq.to(model.dtype)
                    if codes is not None:
                        out.codes[f"model.layers.{i}.{key}"] = codes
                bar.update()
            xs = [model.block(i, x) for x in xs]
            coded = [name for name in out.codes if name.startswith(f"model.layers.{i}.")]
            out.keep_block(block)
            # block i is finished once its marker is written: its tensors, codes and the next block's inputs first
            work.save(f"inputs.{i + 1}", xs)
            work.save(f"block.{i}", {"coded": coded, "keys": out.block_keys[-1],
                                      "shapes": {k: v for k, v in out.shapes.items() if k.startswith(f"model.layers.{i}.")}})
            work.drop(f"inputs.{i}")
            bar.set_postfix(block=i)
        bar.close()
    return out


def reference_pass(model: Model, calib: torch.Tensor, targets: bool, head_hessian: bool, progress: bool = True,
                   work: WorkDir | None = None) -> tuple[Spill | None, torch.Tensor | None]:
    """The calibration sequences through the unquantized model, block by block (each block read once): with
    `targets`, the scale tuning's targets (tune.log_probs of each sequence, parked on disk, by its index);
    with `head_hessian`, the sum over calibration tokens of h h^T for the output layer's input h (float64).
    Kept in `work` (default: a temporary directory), and taken from there when it is."""
    work = work or WorkDir(None, {})
    if work.has("reference"):
        return (work.spill("targets") if targets else None), work.load("reference")
    with torch.no_grad():
        xs = [model.embed(seq) for seq in calib]
        for i in tqdm(range(model.config.n_layers), unit="block", disable=not progress, desc="reference pass"):
            xs = [model.block(i, x) for x in xs]
        out, H = work.spill("targets") if targets else None, None

        def hook(layer, name, inp):
            nonlocal H
            if head_hessian:
                hh = (inp.T @ inp).to(torch.float64)
                H = hh if H is None else H + hh
            if not targets:
                raise _Captured  # the logits are not needed

        for k, x in enumerate(xs):
            try:
                logits = model.head(x, hook)
            except _Captured:
                continue
            out[k] = log_probs(logits)
    work.save("reference", H)     # the targets are kept: this marks them whole
    return out, H


def quantize_vocab(model: Model, H: torch.Tensor | None, method: Method, workers: RowWorkers | None,
                   progress: bool = True) -> dict[str, Quantized]:
    """Code the vocabulary matrices of `model` in place at method.vocab_layout, before the blocks, so that
    the blocks are quantized seeing the coded embedding.  What the head's errors cost is weighted by H, its
    input's Hessian over the calibration tokens, taken from the model before anything is quantized
    (reference_pass; None: plain nearest-point coding); the tied matrix is coded for the head too
    (docs/results.md measures it against plain nearest-point coding, which would suit the lookup), an untied
    embedding with plain nearest-point coding."""
    g = model.globals
    out = {}
    present = [name for name in VOCAB_TENSORS if name.removeprefix("model.") in g]
    for name in tqdm(present, unit="matrix", disable=not progress, desc="coding the vocabulary"):
        key = name.removeprefix("model.")
        weighted = H is not None and (key == "lm_head.weight" or "lm_head.weight" not in g)
        how = method if weighted else replace(method, hessian=False)
        [(Wq, q)] = quantize_group(how, [g[key]], H if weighted else None, [method.vocab_layout], workers)
        g[key], out[name] = Wq.to(model.dtype), q
    return out


# Below this many linear weights the workers' start (about 4 s) is not worth it (fixtures, tests).
WORKERS_MIN_WEIGHTS = 1 << 24


def _wants_workers(model: Model) -> bool:
    first = model.blocks[0]     # the blocks are alike; block 0 is the one quantize_model asks for next
    linear = model.config.n_layers * sum(w.numel() for k, w in first.items() if k.endswith("proj.weight"))
    on_cpu = model.globals["embed_tokens.weight"].is_cpu
    return on_cpu and torch.get_num_threads() > 1 and linear >= WORKERS_MIN_WEIGHTS


def quantize_group(method: Method, Ws: list[torch.Tensor], H: torch.Tensor | None, layouts: list[Layout | None],
                   workers: RowWorkers | None) -> list[tuple[torch.Tensor, Quantized | None]]:
    """[method.quantize(W, H, layout)] for matrices that share the input Hessian H: on one torch
    thread, or cut into row blocks that `workers` quantize side by side, each block's weights copied into the
    result as it arrives (a vocabulary matrix, 0.93 GB in float32 for Qwen2.5-1.5B, is then held twice, not three
    times: its input, its result, and not also every block's part before they are put together)."""
    if workers is None:
        with one_thread():
            return [method.quantize(W, H, lay) for W, lay in zip(Ws, layouts)]
    U = None
    if H is not None and method.needs_hessian:
        with one_thread():      # the workers' one thread: the same factor, bit for bit, as each would make
            U = inverse_hessian_factor(H, method.damp)     # once, not once per row block (0.6-2.6 GB each)
    out = []
    for W, blocks in zip(Ws, workers.map_rows(partial(_quantize_rows, method, U), Ws, H, layouts)):
        Wq, codes, row = None, [], 0
        for w, c in blocks:
            if Wq is None:
                Wq = torch.empty(W.shape, dtype=w.dtype)
            Wq[row:row + len(w)] = w
            row += len(w)
            codes.append(c)
            del w       # before waiting for the next block
        out.append((Wq, None if codes[0] is None else Quantized.cat_rows(codes)))
    return out


def _quantize_rows(method: Method, U: torch.Tensor | None, W: torch.Tensor, H: torch.Tensor | None,
                   layout: Layout | None) -> tuple[torch.Tensor, Quantized | None]:
    """method.quantize of one row block, in a worker (the factor U and H come through shared memory)."""
    return method.quantize(W, H, layout, U)


class _Captured(Exception):
    """Raised by the Hessian hook once it has its input: the rest of the block is not needed."""


def _input_hessian(model: Model, i: int, xs: list[torch.Tensor], linear: str) -> torch.Tensor:
    """sum over calibration tokens of x x^T for the input x of `linear` in block i (float64; each
    sequence's product in the model's precision, half the time of float64 products).
    Each pass stops at `linear`: q/k/v need only the norm, gate/up only the attention half."""
    H = None

    def hook(layer, name, inp):
        nonlocal H
        if name == linear:
            xx = (inp.T @ inp).to(torch.float64)
            H = xx if H is None else H + xx
            raise _Captured

    for x in xs:
        try:
            model.block(i, x, hook)
        except _Captured:
            pass
    return H
