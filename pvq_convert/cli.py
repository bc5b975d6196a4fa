"""`python -m pvq_convert`: the command line."""
from __future__ import annotations

import argparse
import sys

from . import ConvertError
from .gguf_out import OUTTYPES
from .vocab import PRE_TOKENIZERS


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m pvq_convert",
        description="Convert a Hugging Face Llama/Qwen2 checkpoint (safetensors + config.json + tokenizer) "
                    "to GGUF. The output is written to a temporary file and renamed when complete.",
        epilog="example: python -m pvq_convert ~/models/SmolLM2-135M-Instruct --outtype f16 -o smollm2-f16.gguf")
    p.add_argument("model", help="model directory, a .safetensors file (config.json and the tokenizer beside it), "
                                 "or a sharded checkpoint's model.safetensors.index.json")
    p.add_argument("-o", "--outfile", help="output GGUF path (default: <model dir>/<name>-<OUTTYPE>.gguf)")
    p.add_argument("--outtype", default="f16", choices=list(OUTTYPES),
                   help="tensor type of the 2-D weights; norms and biases stay f32 (default: %(default)s)")
    p.add_argument("--vocab-pre", choices=PRE_TOKENIZERS,
                   help="BPE pre-tokenizer name, when it cannot be told from tokenizer.json")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from .convert import convert  # after parsing, so that --help is instant

    try:
        out = convert(args.model, args.outfile, args.outtype, args.vocab_pre, progress=not args.quiet)
    except ConvertError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: no output written", file=sys.stderr)
        return 130
    print(f"wrote {out}")
    return 0
