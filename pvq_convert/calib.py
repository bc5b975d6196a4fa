"""Calibration data: token windows from a text file, tokenized with the model's own tokenizer."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from . import ConvertError


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


def calibration_tokens(model_dir: Path, text_file: Path, n_seq: int, seq_len: int, seed: int = 0) -> torch.Tensor:
    try:
        text = Path(text_file).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConvertError(f"cannot read calibration file {text_file}: {e}") from None
    return token_windows(load_tokenizer(model_dir)(text), n_seq, seq_len, seed)
