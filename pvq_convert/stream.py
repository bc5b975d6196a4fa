"""Block streaming beyond torch_model.StreamedBlocks: tensors parked on disk, and a forward-backward pass
that holds one block's graph at a time.

The pipeline never holds a whole model (docs/pipeline.md, "Peak memory"): each pass over the blocks asks
StreamedBlocks for block i, which reads it from the checkpoint (or from a Spill) and forgets the block
before it.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Callable

import torch

from .torch_model import Model, OutputHook


class Spill:
    """Tensors kept in files of a temporary directory instead of memory, by key (removed with the object):
    spill[key] = tensor, spill[key] reads it back."""

    def __init__(self):
        self._dir = tempfile.TemporaryDirectory(prefix="pvq-spill-")
        self._files: dict[object, Path] = {}
        self._made = 0

    def __setitem__(self, key, t: torch.Tensor) -> None:
        if key not in self._files:
            self._files[key], self._made = Path(self._dir.name) / f"{self._made}.pt", self._made + 1
        torch.save(t.detach().cpu().clone(), self._files[key])   # clone: a view would save its whole storage

    def __getitem__(self, key) -> torch.Tensor:
        return torch.load(self._files[key])

    def __contains__(self, key) -> bool:
        return key in self._files

    def __delitem__(self, key) -> None:
        self._files.pop(key).unlink()

    def __len__(self) -> int:
        return len(self._files)


def streamed_backward(model: Model, tokens: torch.Tensor, loss: Callable[[torch.Tensor, slice], torch.Tensor],
                      out_hook: OutputHook | None = None, head_rows: int | None = None) -> torch.Tensor:
    """loss(model(tokens, out_hook)).backward(), holding one block's graph at a time: a forward pass that keeps
    each block's input, then the head's backward and each block's, from the last down, every block run again
    with gradients.  The gradients that reach the leaves out_hook brings in are those of the whole graph,
    bit for bit (tests/test_stream.py).  loss(logits, rows) gets the logits of the tokens `rows`; with
    `head_rows`, the head runs on that many tokens at a time (its logits and their gradients are the largest
    tensors of a step: 512 tokens x a 49k vocabulary is 100 MB each) and the loss must be a sum over its rows.
    Returns the loss."""
    with torch.no_grad():
        xs = [model.embed(torch.as_tensor(tokens, dtype=torch.int64))]
        for i in range(model.config.n_layers):
            xs.append(model.block(i, xs[-1], out_hook=out_hook))
    with torch.enable_grad():
        x = xs.pop()
        step = head_rows or len(x)
        grad, value = torch.empty_like(x), 0
        for start in range(0, len(x), step):
            rows = slice(start, start + step)
            xr = x[rows].detach().requires_grad_()
            part = loss(model.head(xr), rows)
            part.backward()
            grad[rows], value = xr.grad, value + part.detach()
        for i in reversed(range(model.config.n_layers)):
            x = xs.pop().requires_grad_(i > 0)     # the embedding needs no gradient
            model.block(i, x, out_hook=out_hook).backward(grad)
            grad = x.grad
    return value
