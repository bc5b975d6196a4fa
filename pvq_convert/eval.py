"""Perplexity and KL divergence of a torch model against the original, with llama-perplexity's protocol,
so that the figures line up with llama.cpp's and the runtime's.

Protocol (llama.cpp tools/perplexity, perplexity()): the whole text is tokenized once, with BOS first
where the vocabulary adds it; chunk i is tokens [i n_ctx, (i+1) n_ctx), its first token replaced by
BOS where the vocabulary adds it; each chunk is evaluated from an empty cache; the logits at positions
first .. n_ctx-2 (first = n_ctx/2) score the next tokens, so each chunk scores n_ctx - 1 - n_ctx/2
tokens. PPL = exp(mean NLL). KLD = mean over the same positions of KL(p_base || p_model); unlike
llama.cpp, which stores base log-probabilities as uint16, ours are exact (float64).

Text: the shared eval text is split at the first line break after its middle: the first half is for
calibration, the second for evaluation (`split_text`). Tokenizer: llama.cpp's own, through
llama-cpp-python on a GGUF of the model (vocab only), or, without one, the model directory's
tokenizer (tokenizer.json / tokenizer.model, which the project checks against llama.cpp's elsewhere).

    python -m pvq_convert.eval MODEL_DIR [--rotate | --other DIR] [--ctx 512] [--chunks 40]
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from . import ConvertError

Logits = Callable[[list[int]], torch.Tensor]  # token ids (T) -> logits (T, vocab)


@dataclass(frozen=True)
class Tokenizer:
    encode_fn: Callable[[str], list[int]]  # without special tokens
    add_bos: bool
    bos_id: int | None

    def encode(self, text: str) -> list[int]:
        """As llama.cpp's common_tokenize(text, add_special=true): BOS first if the vocab adds it."""
        ids = self.encode_fn(text)
        return [self.bos_id] + ids if self.add_bos else ids


def gguf_tokenizer(path: str | Path) -> Tokenizer:
    """llama.cpp's tokenizer from a GGUF file (vocab only, no weights loaded)."""
    import llama_cpp
    llm = llama_cpp.Llama(str(path), vocab_only=True, verbose=False)
    add_bos = bool(llama_cpp.llama_vocab_get_add_bos(llama_cpp.llama_model_get_vocab(llm.model)))
    return Tokenizer(lambda text: llm.tokenize(text.encode("utf-8"), add_bos=False, special=False),
                     add_bos, llm.token_bos())


def hf_tokenizer(model_dir: str | Path) -> Tokenizer:
    """The model directory's tokenizer; BOS settings as the converter writes them into the GGUF."""
    from .calib import load_tokenizer
    from .vocab import load_vocab
    model_dir = Path(model_dir)
    n_vocab = json.loads((model_dir / "config.json").read_text())["vocab_size"]
    vocab = load_vocab(model_dir, n_vocab)
    return Tokenizer(load_tokenizer(model_dir), vocab.add_bos, vocab.special.get("bos"))


def split_text(text: str) -> tuple[str, str]:
    """(calibration half, evaluation half), cut at the first line break after the middle."""
    cut = text.find("\n", len(text) // 2)
    cut = len(text) // 2 if cut < 0 else cut + 1
    return text[:cut], text[cut:]


def chunks(tokens: list[int], n_ctx: int, n_chunks: int | None, tok: Tokenizer) -> list[list[int]]:
    """llama-perplexity's chunks: consecutive windows of n_ctx tokens, BOS replacing the first token
    where the vocabulary adds it."""
    if n_ctx < 4:
        raise ConvertError(f"context of {n_ctx} tokens is too short to score")
    available = len(tokens) // n_ctx
    if available < 1 or (n_chunks is not None and available < n_chunks):
        raise ConvertError(f"the text has {len(tokens)} tokens: too short for "
                           f"{n_chunks or 1} chunk(s) of {n_ctx}")
    out = [tokens[i * n_ctx:(i + 1) * n_ctx] for i in range(n_chunks or available)]
    if tok.add_bos:
        out = [[tok.bos_id] + c[1:] for c in out]
    return out


@dataclass
class Scores:
    n_tokens: int = 0        # scored tokens
    nll: float = 0.0         # sum of -log p(token)
    nll_base: float = 0.0
    kld: float = 0.0         # sum of KL(p_base || p)
    same_top: int = 0        # positions where both models' argmax agree

    @property
    def ppl(self) -> float:
        return math.exp(self.nll / self.n_tokens)

    @property
    def ppl_base(self) -> float:
        return math.exp(self.nll_base / self.n_tokens)

    @property
    def mean_kld(self) -> float:
        return self.kld / self.n_tokens


def score(model: Logits, token_chunks: list[list[int]], base: Logits | None = None,
          progress: Callable[[int, Scores], None] | None = None) -> Scores:
    """Perplexity of `model` (and of `base`, with the KL divergence from base to model if given)."""
    s = Scores()
    for i, c in enumerate(token_chunks):
        first = len(c) // 2
        targets = torch.tensor(c[first + 1:])
        with torch.no_grad():
            logp = torch.log_softmax(model(c)[first:-1].to(torch.float64), dim=-1)
            s.nll -= float(logp.gather(1, targets[:, None]).sum())
            if base is not None:
                logq = torch.log_softmax(base(c)[first:-1].to(torch.float64), dim=-1)
                s.nll_base -= float(logq.gather(1, targets[:, None]).sum())
                s.kld += float((logq.exp() * (logq - logp)).sum())
                s.same_top += int((logq.argmax(-1) == logp.argmax(-1)).sum())
        s.n_tokens += len(targets)
        if progress:
            progress(i + 1, s)
    return s


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pvq_convert.eval",
                                 description="Perplexity and KL divergence against the original model, "
                                             "llama-perplexity's protocol, in torch.")
    ap.add_argument("model", help="Hugging Face model directory (the base)")
    what = ap.add_mutually_exclusive_group()
    what.add_argument("--rotate", action="store_true", help="evaluate the rotated base (coherence processing)")
    what.add_argument("--other", help="evaluate this Hugging Face directory (e.g. fake-quantized weights)")
    ap.add_argument("--seed", type=int, default=0, help="rotation seed")
    ap.add_argument("--text", help="eval text (default: the second half of the shared eval text)")
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--chunks", type=int, default=40)
    ap.add_argument("--tokenizer-gguf", help="tokenize with llama.cpp on this GGUF (default: the model's)")
    ap.add_argument("--float64", action="store_true")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    args = ap.parse_args(argv)
    try:
        _run(args)
    except ConvertError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


def _run(args) -> None:
    from .hf_model import open_model
    from .rotate import Rotation, rotate_model
    from .torch_model import load_model

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.text:
        try:
            text = Path(args.text).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ConvertError(f"cannot read {args.text}: {e}") from None
    else:
        try:
            from models import EVAL_TEXT
            text = split_text(EVAL_TEXT.read_text(encoding="utf-8"))[1]
        except (ImportError, OSError):
            raise ConvertError("the shared eval text is not reachable from here: pass --text FILE") from None
    hf = open_model(args.model)  # checks the directory before anything slow
    if args.tokenizer_gguf and not Path(args.tokenizer_gguf).is_file():
        raise ConvertError(f"{args.tokenizer_gguf} is not a file")
    tok = gguf_tokenizer(args.tokenizer_gguf) if args.tokenizer_gguf else hf_tokenizer(hf.dir)
    token_chunks = chunks(tok.encode(text), args.ctx, args.chunks, tok)
    dtype = torch.float64 if args.float64 else torch.float32
    base = load_model(hf, dtype)
    if args.rotate:
        model = rotate_model(base, Rotation(seed=args.seed))
    elif args.other:
        model = load_model(args.other, dtype)
    else:
        model = None

    def report(i: int, s: Scores) -> None:
        line = f"[{i}/{len(token_chunks)}] PPL {s.ppl:.4f}"
        if model is not None:
            line += f"  base PPL {s.ppl_base:.4f}  KLD {s.mean_kld:.6f}  same top {s.same_top / s.n_tokens:.2%}"
        print(line, file=sys.stderr, flush=True)

    s = score(model, token_chunks, base, report) if model is not None else score(base, token_chunks, None, report)
    out = {"chunks": len(token_chunks), "ctx": args.ctx, "tokens_scored": s.n_tokens, "ppl": s.ppl}
    if model is not None:
        out.update(ppl_base=s.ppl_base, kld=s.mean_kld, same_top=s.same_top / s.n_tokens)
    print(json.dumps(out))


if __name__ == "__main__":
    sys.exit(main())
