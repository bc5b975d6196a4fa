"""Block streaming beyond torch_model.StreamedBlocks: tensors parked on disk, the work directory that lets a
conversion go on after an interruption, and a forward-backward pass that holds one block's graph at a time.

The pipeline never holds a whole model (docs/pipeline.md, "Peak memory"): each pass over the blocks asks
StreamedBlocks for block i, which reads it from the checkpoint (or from a Spill) and forgets the block
before it.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import torch

from . import ConvertError
from .torch_model import Model, OutputHook


def save_whole(obj, path: Path) -> None:
    """torch.save that leaves either the whole file or none: written under a temporary name, then renamed."""
    tmp = path.with_name(path.name + ".part")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _owned(value):
    """value (a tensor, or a dict of tensors and numbers) with each tensor a copy of its own on the CPU: a view
    would save its whole storage."""
    if isinstance(value, dict):
        return {k: _owned(v) for k, v in value.items()}
    return value.detach().cpu().clone() if isinstance(value, torch.Tensor) else value


class Spill:
    """Tensors (or dicts of tensors and numbers) kept in files of a directory instead of memory, by key:
    spill[key] = tensor, spill[key] reads it back.  In `directory`, a WorkDir's (`owner`, kept alive with the
    spill), or in a temporary one removed with it."""

    def __init__(self, directory: Path | None = None, owner: "WorkDir | None" = None):
        self._tmp = None if directory else tempfile.TemporaryDirectory(prefix="pvq-spill-")
        self._owner = owner
        self.dir = Path(directory or self._tmp.name)
        self.dir.mkdir(parents=True, exist_ok=True)

    def _path(self, key) -> Path:
        return self.dir / f"{key}.pt"

    def __setitem__(self, key, value) -> None:
        save_whole(_owned(value), self._path(key))

    def __getitem__(self, key) -> torch.Tensor:
        return torch.load(self._path(key))

    def __contains__(self, key) -> bool:
        return self._path(key).is_file()

    def __delitem__(self, key) -> None:
        self._path(key).unlink()

    def __len__(self) -> int:
        return sum(1 for _ in self.dir.glob("*.pt"))


class WorkDir:
    """What a conversion keeps on disk as it goes (docs/pipeline.md, "Going on after an interruption"): each
    finished step's results, saved whole.  In a directory the user names (--work-dir), a conversion that stopped
    (an error, ^C, a lost machine) goes on from its last finished step when it is run again with the same input
    and options (`stamp`, compared); by default a temporary directory.  remove() once the output is written."""

    def __init__(self, path: Path | None, stamp: dict):
        self._tmp = None if path else tempfile.TemporaryDirectory(prefix="pvq-work-")
        self.path = Path(path or self._tmp.name)
        self.path.mkdir(parents=True, exist_ok=True)
        stamp_file = self.path / "stamp.json"
        self.resumed = any(p.name != stamp_file.name for p in self.path.iterdir())
        if stamp_file.is_file() and self.resumed:
            kept = json.loads(stamp_file.read_text())
            if kept != stamp:
                what = ", ".join(k for k in stamp if kept.get(k) != stamp[k]) or "its contents"
                raise ConvertError(f"--work-dir {self.path} holds the work of another conversion (it differs in "
                                   f"{what}): remove it or name another directory")
        elif self.resumed:
            raise ConvertError(f"--work-dir {self.path} is not empty and holds no conversion's work: name a new or "
                               "empty directory")
        else:       # new, or a run that stopped before its first step was finished
            stamp_file.write_text(json.dumps(stamp, indent=1))

    def _path(self, name: str) -> Path:
        return self.path / f"{name}.pt"

    def has(self, name: str) -> bool:
        return self._path(name).is_file()

    def save(self, name: str, obj) -> None:
        save_whole(obj, self._path(name))

    def load(self, name: str):
        return torch.load(self._path(name), weights_only=False)

    def drop(self, name: str) -> None:
        self._path(name).unlink(missing_ok=True)

    def kept(self, name: str, make: Callable[[], object]):
        """make(), saved under `name`, or what was saved there."""
        if self.has(name):
            return self.load(name)
        value = make()
        self.save(name, value)
        return value

    def spill(self, name: str) -> Spill:
        return Spill(self.path / name, self)

    def remove(self) -> None:
        if self._tmp:
            self._tmp.cleanup()
        else:
            shutil.rmtree(self.path)


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
