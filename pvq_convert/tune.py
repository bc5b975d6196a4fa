"""Scale tuning: the last step of the PVQ pipeline, after GPTQ has chosen every code.

What GPTQ minimises is each layer's own output error; what matters is the model's next-token
distribution.  So with every shape and gain code fixed, the numbers the file holds in higher precision
are fitted to it: the fp16 row scale of every PVQ tensor, one factor per output row.  Loss: the KL
divergence from the unquantized model's distribution to the quantized one's over the calibration
tokens, Adam, one sequence per step.  The codes stay, so the file's size and the runtime's work do not
change.  (Tuning the RMS norm weights as well, a factor per input channel, made the held-out KLD worse
in the measurement of docs/pipeline.md, so they stay.)
"""
from __future__ import annotations

import torch
from tqdm import tqdm

from .pvq import Quantized, dequantize_matrix
from .torch_model import Model


def reference_log_probs(model: Model, calib: torch.Tensor) -> list[torch.Tensor]:
    """The unquantized model's log-probabilities over the calibration sequences, kept in fp16 (the
    targets of tune_scales; 16 x 512 tokens of a 49k vocabulary is 0.8 GB)."""
    with torch.no_grad():
        return [torch.log_softmax(model(seq).float(), -1).half() for seq in calib]


def tune_scales(model: Model, codes: dict[str, Quantized], calib: torch.Tensor, targets: list[torch.Tensor],
                epochs: int, lr: float = 2e-3, progress: bool = True) -> None:
    """Fit the row scales of `codes` (HF name -> PVQ codes of model's weight) to `targets`
    (reference_log_probs).  Updates the codes' scales and the model's weights in place: the weights stay
    exactly the decoded codes."""
    factors = {name: torch.ones(q.scale.shape[0], device=calib.device, requires_grad=True)
               for name, q in codes.items()}
    opt = torch.optim.Adam(factors.values(), lr=lr)

    def scaled(layer, name, y):  # a factor on output row r is a factor on row r's scale
        f = factors.get(f"model.layers.{layer}.{name}.weight")
        return y if f is None else y * f

    bar = tqdm(total=epochs * len(calib), unit="seq", disable=not progress, desc="tuning scales")
    for _ in range(epochs):
        for seq, target in zip(calib, targets):
            with torch.enable_grad():
                p = target.float()
                kld = (p.exp() * (p - torch.log_softmax(model(seq, out_hook=scaled).float(), -1))).sum(-1).mean()
                opt.zero_grad()
                kld.backward()
                opt.step()
            bar.update()
            bar.set_postfix(kld=f"{float(kld.detach()):.4f}")
    bar.close()
    with torch.no_grad():
        for name, q in codes.items():
            q.scale = (q.scale.float() * factors[name]).half()
            layer, key = name.removeprefix("model.layers.").split(".", 1)
            block = model.blocks[int(layer)]
            block[key] = dequantize_matrix(q).to(model.dtype)
            bias = key.removesuffix("weight") + "bias"
            if bias in block:  # the factor scaled the output after the bias (Qwen2's q/k/v)
                block[bias] = block[bias] * factors[name].to(block[bias].dtype)
