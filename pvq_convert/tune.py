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

from collections.abc import Sequence

import torch
from tqdm import tqdm

from .stream import WorkDir, streamed_backward

# Tokens per head step: a 512-token step's logits, log-softmax and gradients over a 49k vocabulary are ~0.5 GB at
# once, a quarter of that in steps of 128; the gradients are the same bit for bit (tests/test_stream.py).
HEAD_ROWS = 128


def log_probs(logits: torch.Tensor) -> torch.Tensor:
    """A tuning target: the unquantized model's log-probabilities, kept in fp16 (16 x 512 tokens of a 49k
    vocabulary is 0.8 GB: quantize.reference_pass parks them on disk)."""
    return torch.log_softmax(logits.float(), -1).half()


def tune_scales(qm, calib: torch.Tensor, targets: Sequence[torch.Tensor], epochs: int, lr: float = 2e-3,
                progress: bool = True, work: WorkDir | None = None) -> None:
    """Fit the row scales of the blocks' codes of `qm` (quantize.QuantizedModel) to `targets` (log_probs of
    each calibration sequence), block-streamed: each step holds one block's graph (stream.streamed_backward).
    Gives qm the factors: its codes come back with their scales times them, and qm.tensor decodes a tuned code
    when it is asked for, so the weights stay exactly the decoded codes.  After every step the factors and the
    optimizer's state are kept in `work`, and a run that finds them there goes on from that step."""
    factors = {name: torch.ones(qm.shapes[name][0], device=calib.device, requires_grad=True)
               for name in qm.codes if name.startswith("model.layers.")}
    opt = torch.optim.Adam(factors.values(), lr=lr)
    done = 0
    if work is not None and work.has("tuning"):
        kept = work.load("tuning")
        with torch.no_grad():
            for name, f in factors.items():
                f.copy_(kept["factors"][name])
        opt.load_state_dict(kept["optimizer"])
        done = kept["steps"]
    model = qm.model.to(calib.device)

    def scaled(layer, name, y):  # a factor on output row r is a factor on row r's scale
        f = factors.get(f"model.layers.{layer}.{name}.weight")
        return y if f is None else y * f

    bar = tqdm(total=epochs * len(calib), initial=done, unit="seq", disable=not progress, desc="tuning scales")
    for step in range(done, epochs * len(calib)):
        k = step % len(calib)
        p = targets[k].to(calib.device)     # fp16: each head step widens its own rows

        def kl(logits, rows):   # the mean over tokens of KL(p || q), summed over HEAD_ROWS tokens at a time
            pr = p[rows].float()
            return (pr.exp() * (pr - torch.log_softmax(logits.float(), -1))).sum() / len(p)

        opt.zero_grad()
        kld = streamed_backward(model, calib[k], kl, scaled, head_rows=HEAD_ROWS)
        opt.step()
        if work is not None:
            work.save("tuning", {"factors": {n: f.detach() for n, f in factors.items()},
                                 "optimizer": opt.state_dict(), "steps": step + 1})
        bar.update()
        bar.set_postfix(kld=f"{float(kld):.4f}")
    bar.close()
    for name, f in factors.items():
        qm.retune(name, f)
