"""`python -m pvq_convert`: the command line."""
from __future__ import annotations

import argparse
import sys

from pathlib import Path

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
    q = p.add_argument_group("quantization", "with --bits, the linear layers are quantized (layer by layer, "
                             "GPTQ-style); embeddings, norms and the output layer keep --outtype")
    q.add_argument("--bits", type=float, help="target bits per linear weight, a PVQ preset: 2.25, 3.25 or 4.25")
    q.add_argument("--method", choices=("pvq", "gptq", "rtn"), default="pvq",
                   help="pvq, or the scalar baselines gptq / rtn (3 bits + fp16 scale per 64 at --bits 3.25, "
                        "4 at 4.25) (default: %(default)s)")
    q.add_argument("--no-hessian", action="store_true", help="pvq: plain nearest-point coding, no GPTQ feedback")
    q.add_argument("--no-rotate", action="store_true",
                   help="skip coherence processing (norm folding and Hadamard rotations, docs/rotation.md)")
    q.add_argument("--calib", type=Path, help="calibration text file (plain UTF-8); default: text the model "
                   "generates itself from short seeds (no download; costs some quality, docs/pipeline.md)")
    q.add_argument("--calib-seqs", type=int, default=16, help="calibration sequences (default: %(default)s)")
    q.add_argument("--calib-len", type=int, default=512, help="tokens per sequence (default: %(default)s)")
    return p


def quant_options(args):
    """The quantization the flags ask for, or None for the unquantized path."""
    if args.bits is None:
        return None
    from .pvq_presets import PRESETS, preset
    from .quantize import Method, QuantOptions

    if args.bits not in PRESETS:
        raise ConvertError(f"--bits {args.bits} has no preset; choose one of {', '.join(map(str, sorted(PRESETS)))}")
    if args.calib_seqs < 1 or args.calib_len < 2:
        raise ConvertError("--calib-seqs must be >= 1 and --calib-len >= 2")
    method = Method(args.method, layout=preset(args.bits), hessian=not args.no_hessian,
                    scalar_bits=int(args.bits))
    return QuantOptions(method, args.calib, args.calib_seqs, args.calib_len, rotate=not args.no_rotate)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from .convert import convert  # after parsing, so that --help is instant

    try:
        out = convert(args.model, args.outfile, args.outtype, args.vocab_pre, progress=not args.quiet,
                      quant=quant_options(args))
    except ConvertError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: no output written", file=sys.stderr)
        return 130
    print(f"wrote {out}")
    return 0
