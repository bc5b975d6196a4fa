"""Calibration data: token windows from a text file, tokenized with the model's own tokenizer, or,
with no file, text the model writes itself from short seeds (no download, nothing shipped).

Self-generated text: each sequence starts with one of SEEDS (teacher-forced), then the model samples
its own continuation at temperature 1 (the distribution it was trained to reproduce, so the layer
inputs look like those of real text of the model's own kind).  docs/pipeline.md gives its cost in
quality against real text.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from tqdm import tqdm

from . import ConvertError
from .torch_model import one_thread


def load_tokenizer(model_dir: Path) -> Callable[[str], list[int]]:
    """text -> token ids, without special tokens: sentencepiece for tokenizer.model, Hugging Face
    `tokenizers` for tokenizer.json (the same files the converter writes into the GGUF)."""
    if (model_dir / "tokenizer.model").is_file():
        import sentencepiece as spm
        sp = spm.SentencePieceProcessor(model_file=str(model_dir / "tokenizer.model"))
        return lambda text: sp.encode(text)
    if (model_dir / "tokenizer.json").is_file():
        from tokenizers import Tokenizer
        tk = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        return lambda text: tk.encode(text, add_special_tokens=False).ids
    raise ConvertError(f"no tokenizer.model or tokenizer.json in {model_dir}")


def token_windows(ids: list[int], n_seq: int, seq_len: int, seed: int = 0) -> torch.Tensor:
    """n_seq windows of seq_len tokens at random, non-overlapping positions of ids -> (n_seq, seq_len)."""
    n_slots = len(ids) // seq_len
    if n_slots < n_seq:
        raise ConvertError(f"calibration text too short: {len(ids)} tokens, need {n_seq} x {seq_len} = "
                           f"{n_seq * seq_len} (use fewer or shorter sequences, or a longer file)")
    slots = torch.randperm(n_slots, generator=torch.Generator().manual_seed(seed))[:n_seq].sort().values
    t = torch.tensor(ids[:n_slots * seq_len], dtype=torch.int64).view(n_slots, seq_len)
    return t[slots]


def calibration_tokens(model_dir: Path, text_file: Path | None, n_seq: int, seq_len: int, seed: int = 0,
                       load_model: Callable[[], object] | None = None, progress: bool = False,
                       n_generated: int = 0) -> torch.Tensor:
    """(n_seq, seq_len) token ids: windows of `text_file`, or text the model load_model() makes generates when it
    is None; with a file, n_generated of the n_seq sequences are generated and the rest are windows of the file.
    Generation needs every block for every token: load_model() gives the whole model, called only to generate."""
    encode = load_tokenizer(model_dir)
    if text_file is None:
        return generated_tokens(load_model(), encode, n_seq, seq_len, seed, progress)
    try:
        text = Path(text_file).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConvertError(f"cannot read calibration file {text_file}: {e}") from None
    n_generated = min(n_generated, n_seq)
    windows = token_windows(encode(text), n_seq - n_generated, seq_len, seed)
    if not n_generated:
        return windows
    return torch.cat([windows, generated_tokens(load_model(), encode, n_generated, seq_len, seed, progress)])


# Openings of different kinds of text: prose, code, dialogue, lists, reference, mathematics.
SEEDS = ("The", "In 1887,", "def main():", "Question:", "# Installation", "Once upon a time",
         "Dear", "1.", "According to the", "import numpy as np", "User:", "Chapter", "The function",
         "Abstract", "Ingredients:", "Theorem.")


def generated_tokens(model, encode: Callable[[str], list[int]], n_seq: int, seq_len: int,
                     seed: int = 0, progress: bool = False) -> torch.Tensor:
    """n_seq sequences of seq_len tokens that `model` (torch_model.Model) writes itself, all sampled
    in one batch with a key/value cache -> (n_seq, seq_len)."""
    prompts = [encode(SEEDS[i % len(SEEDS)])[:seq_len] for i in range(n_seq)]
    gen = torch.Generator().manual_seed(seed)
    out = torch.empty(n_seq, seq_len, dtype=torch.int64)
    caches = [{} for _ in range(model.config.n_layers)]
    with torch.no_grad(), one_thread():
        for t in tqdm(range(seq_len), unit="token", disable=not progress, desc="writing calibration text"):
            forced = [p[t] if t < len(p) else -1 for p in prompts]
            if t == 0:
                out[:, 0] = torch.tensor(forced)
            else:
                x = model.embed(out[:, t - 1:t])
                for i in range(model.config.n_layers):
                    x = model.block(i, x, cache=caches[i])
                probs = torch.softmax(model.head(x)[:, -1].double(), -1).cpu()
                sampled = torch.multinomial(probs, 1, generator=gen)[:, 0]
                out[:, t] = torch.where(torch.tensor(forced) >= 0, torch.tensor(forced), sampled)
    return out
