"""How close a GGUF file's outputs stay to the F16 reference's, as a user runs it: KL divergence, perplexity and
same top-1 over llama-perplexity's chunks of a text, the file run by its own runtime (pvq's through the
`pvq` bindings, llama.cpp's through llama-cpp-python), the reference by llama.cpp, both from the same token
ids (llama.cpp's tokenizer on the reference).

The evaluation texts, none of which any calibration reads:
  prose  the second half of ../shared/data/eval/debian-reference.txt (the calibration reads the first half)
  code   Python source: the standard library's argparse, dataclasses and enum modules (models.code_text)

    python -m bench.file_quality FILE.gguf [--text prose|code] [--chunks 40]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from models import EVAL_TEXT, code_text
from models.smollm2 import ensure
from pvq_convert.eval import Scores, Tokenizer, chunks, gguf_tokenizer, score, split_text

TEXTS = ("prose", "code")
N_CTX = 512


def text(name: str) -> str:
    if name == "prose":
        return split_text(EVAL_TEXT.read_text(encoding="utf-8"))[1]
    if name == "code":
        return code_text()
    raise ValueError(f"unknown evaluation text {name!r}; choose from {', '.join(TEXTS)}")


def is_pvq_file(path: Path) -> bool:
    import gguf
    from pvq_convert.pvq_format import is_pvq_type, register_gguf_types
    register_gguf_types()
    return any(is_pvq_type(int(t.tensor_type)) for t in gguf.GGUFReader(path).tensors)


class Runner:
    """token ids -> logits (T, vocab) of a GGUF file from an empty cache, by the runtime that reads it."""

    def __init__(self, path: Path, n_threads: int = 2):
        common = dict(n_ctx=N_CTX, n_batch=N_CTX, n_threads=n_threads, logits_all=True, verbose=False)
        if is_pvq_file(path):
            from pvq import Llama
            self.llm = Llama(str(path), **common)
        else:
            import llama_cpp
            self.llm = llama_cpp.Llama(str(path), n_threads_batch=n_threads, **common)

    def __call__(self, tokens: list[int]) -> torch.Tensor:
        self.llm.reset()
        self.llm.eval(tokens)
        return torch.from_numpy(self.llm.scores[:len(tokens)].copy())

    def close(self) -> None:
        if hasattr(self.llm, "close"):
            self.llm.close()


def eval_chunks(name: str, n_chunks: int, reference: Path) -> list[list[int]]:
    tok: Tokenizer = gguf_tokenizer(reference)
    return chunks(tok.encode(text(name)), N_CTX, n_chunks, tok)


def file_scores(path: Path, texts=TEXTS, n_chunks: int = 40, reference: Path | None = None) -> dict[str, Scores]:
    """{text name: Scores of `path` against the F16 reference} for each evaluation text."""
    reference = reference or ensure().f16_gguf
    base, model = Runner(reference), Runner(path)
    try:
        return {name: score(model, eval_chunks(name, n_chunks, reference), base) for name in texts}
    finally:
        model.close()
        base.close()


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.file_quality")
    ap.add_argument("file", type=Path)
    ap.add_argument("--text", choices=TEXTS, action="append", help="evaluation text (default: both)")
    ap.add_argument("--chunks", type=int, default=40)
    args = ap.parse_args()
    torch.set_num_threads(2)
    for name, s in file_scores(args.file, args.text or TEXTS, args.chunks).items():
        print(json.dumps({"file": str(args.file), "text": name, "bytes": args.file.stat().st_size, "kld": s.mean_kld,
                          "ppl": s.ppl, "ppl_base": s.ppl_base, "same_top": s.same_top / s.n_tokens,
                          "tokens": s.n_tokens}), flush=True)


if __name__ == "__main__":
    main()
