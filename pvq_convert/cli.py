"""`python -m pvq_convert`: the command line."""
from __future__ import annotations

import argparse
import sys

from pathlib import Path

from . import ConvertError
from .gguf_out import OUTTYPES
from .vocab import PRE_TOKENIZERS

TUNE_EPOCHS = 3  # scale tuning's passes by default (measured in docs/pipeline.md)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m pvq_convert",
        description="Convert a Hugging Face Llama/Qwen2 checkpoint (safetensors + config.json + tokenizer) "
                    "to GGUF. The output is written to a temporary file and renamed when complete.",
        epilog="example: python -m pvq_convert ~/models/SmolLM2-135M-Instruct --outtype f16 -o smollm2-f16.gguf")
    p.add_argument("model", help="model directory, a .safetensors file (config.json and the tokenizer beside it), "
                                 "a sharded checkpoint's model.safetensors.index.json, or a GGUF file (llama or qwen2, "
                                 "any tensor type gguf-py dequantizes, a byte-level BPE vocabulary)")
    p.add_argument("-o", "--outfile", help="output GGUF path (default: <model dir>/<name>-<OUTTYPE>.gguf; for a GGUF "
                                           "input, beside it)")
    p.add_argument("--outtype", default="f16", choices=list(OUTTYPES),
                   help="tensor type of the 2-D weights; norms and biases stay f32 (default: %(default)s)")
    p.add_argument("--vocab-pre", choices=PRE_TOKENIZERS,
                   help="BPE pre-tokenizer name, when it cannot be told from tokenizer.json")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    q = p.add_argument_group("quantization", "with --bits, the linear layers are quantized (layer by layer, "
                             "GPTQ-style), and with pvq the token embedding and output layer too (one matrix "
                             "when the checkpoint ties them); norms keep f32, the rest --outtype")
    q.add_argument("--bits", type=float,
                   help="bits per linear weight: pvq 2.25, 2.75, 3.25, 3.75, 4.25 or 4.5 code every linear weight at "
                        "that preset; any other average from 2.25 to 4.5 is reached by --allocate; gptq/rtn: 2.25, "
                        "3.25 or 4.25")
    q.add_argument("--allocate", action="store_true",
                   help="pvq: rates per tensor from a measured sensitivity (the error weighted by the input "
                        "Hessian and the output Fisher information), --bits their average; default: on when --bits is "
                        "between the presets, else every linear weight at the --bits preset")
    q.add_argument("--bits-map", metavar="SPEC",
                   help="pvq: fixed rates for some tensors, e.g. 'ffn_down=4.25,blk.0.attn_v=4.25' (kinds or "
                        "GGUF names), or a file of such pairs; the rest is allocated (implies --allocate)")
    q.add_argument("--embd-bits", type=float, metavar="RATE",
                   help="pvq: rate of the token embedding and output layer, one of the presets (default: the "
                        "--bits preset, for --allocate the highest preset not above --bits)")
    q.add_argument("--keep-embd", action="store_true",
                   help="pvq: keep the token embedding and output layer in --outtype (untied, the final norm "
                        "folded into the output layer): larger files, outside the --bits budget")
    q.add_argument("--method", choices=("pvq", "gptq", "rtn"), default="pvq",
                   help="pvq, or the scalar baselines gptq / rtn (3 bits + fp16 scale per 64 at --bits 3.25, "
                        "4 at 4.25) (default: %(default)s)")
    q.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="where the quantization runs (default: %(default)s)")
    q.add_argument("--no-hessian", action="store_true", help="pvq: plain nearest-point coding, no GPTQ feedback")
    q.add_argument("--tune-epochs", type=int, default=TUNE_EPOCHS,
                   help="pvq with the Hessian: passes over the calibration text that fit the row scales to the "
                        "unquantized model's next-token distribution after GPTQ (docs/pipeline.md; 0: none) "
                        "(default: %(default)s)")
    q.add_argument("--no-rotate", action="store_true",
                   help="skip coherence processing (norm folding and Hadamard rotations, docs/rotation.md)")
    q.add_argument("--calib", type=Path, help="calibration text file (plain UTF-8); default: text the model "
                   "generates itself from short seeds (no download; costs some quality, docs/pipeline.md)")
    q.add_argument("--calib-seqs", type=int, default=16, help="calibration sequences (default: %(default)s)")
    q.add_argument("--calib-generated", type=int, metavar="N",
                   help="with --calib: N of the --calib-seqs sequences are text the model generates itself, so that "
                        "the calibration reaches beyond the file's kind of text (default: a quarter of --calib-seqs; "
                        "0: the file only; docs/pipeline.md and docs/results.md measure the shares)")
    q.add_argument("--calib-len", type=int, default=512, help="tokens per sequence (default: %(default)s)")
    q.add_argument("--work-dir", type=Path, metavar="DIR",
                   help="keep each finished step (the calibration, each quantized block, each tuning step) in DIR, "
                        "a new or empty directory, so that a conversion that stops (an error, ^C, a lost machine) "
                        "goes on from there when the same command is run again; DIR is removed once the output is "
                        "written. Needs about the model's size in float32 and its calibration targets of disk "
                        "(default: a temporary directory, lost if the run stops)")
    return p


def quant_options(args):
    """The quantization the flags ask for, or None for the unquantized path."""
    if args.bits is None:
        if args.allocate or args.bits_map or args.method != "pvq" or args.device != "cpu" or args.work_dir:
            raise ConvertError("--allocate, --bits-map, --method, --device and --work-dir apply to quantization: "
                               "give --bits")
        return None
    from .allocate import parse_bits_map
    from .pvq_presets import PRESETS, preset
    from .quantize import Method, QuantOptions

    if args.calib_seqs < 1 or args.calib_len < 2:
        raise ConvertError("--calib-seqs must be >= 1 and --calib-len >= 2")
    if args.calib_generated is not None and (args.calib is None or not 0 <= args.calib_generated <= args.calib_seqs):
        raise ConvertError("--calib-generated N needs --calib and 0 <= N <= --calib-seqs")
    n_generated = args.calib_seqs // 4 if args.calib_generated is None else args.calib_generated
    if args.tune_epochs < 0:
        raise ConvertError("--tune-epochs must be >= 0")
    if args.device == "cuda":
        import torch
        if not torch.cuda.is_available():
            raise ConvertError("--device cuda: torch sees no CUDA GPU on this machine (use --device cpu)")
    # pvq between two presets: the per-tensor allocation reaches the average (docs/pipeline.md)
    uniform = args.method != "pvq" or not (args.allocate or args.bits_map or args.bits not in PRESETS)
    rates = sorted(PRESETS)
    if not uniform and not rates[0] <= args.bits <= rates[-1]:
        raise ConvertError(f"--bits {args.bits} cannot be reached: PVQ rates go from {rates[0]} to {rates[-1]} "
                           "bits per weight")
    if uniform and args.bits not in PRESETS:
        raise ConvertError(f"--bits {args.bits} has no preset; choose one of {', '.join(map(str, sorted(PRESETS)))}"
                           + ("" if args.method == "pvq" else f" with an integer part (--method {args.method})"))
    if args.method != "pvq" and args.bits % 1 != 0.25:
        raise ConvertError(f"--method {args.method} codes b bits + an fp16 scale per 64: --bits must be 2.25, 3.25 or 4.25")
    if args.bits_map and uniform:
        raise ConvertError("--bits-map needs the per-tensor allocation of --method pvq")
    if args.method != "pvq" and (args.embd_bits is not None or args.keep_embd):
        raise ConvertError(f"--embd-bits and --keep-embd apply to --method pvq (--method {args.method} keeps the "
                           "embedding in --outtype)")
    if args.keep_embd and args.embd_bits is not None:
        raise ConvertError("--keep-embd and --embd-bits contradict each other: give one")
    if args.embd_bits is not None and args.embd_bits not in PRESETS:
        raise ConvertError(f"--embd-bits {args.embd_bits} has no preset; choose one of "
                           f"{', '.join(map(str, sorted(PRESETS)))}")
    vocab_layout = None
    if args.method == "pvq" and not args.keep_embd:
        vocab_layout = preset(args.embd_bits if args.embd_bits is not None
                              else max(r for r in PRESETS if r <= args.bits + 1e-9))
    method = Method(args.method, layout=preset(args.bits) if uniform else None, hessian=not args.no_hessian,
                    scalar_bits=int(args.bits), bits=None if uniform else args.bits,
                    bits_map=parse_bits_map(args.bits_map), tune_epochs=args.tune_epochs, vocab_layout=vocab_layout)
    return QuantOptions(method, args.calib, args.calib_seqs, args.calib_len, rotate=not args.no_rotate,
                        n_generated=n_generated, device=args.device, work_dir=args.work_dir)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from .convert import convert  # after parsing, so that --help is instant
    from .heap import release_freed_tensors

    release_freed_tensors()

    try:
        out = convert(args.model, args.outfile, args.outtype, args.vocab_pre, progress=not args.quiet,
                      quant=quant_options(args), log=print)
    except ConvertError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        kept = f"; the finished steps are kept in {args.work_dir}: run the same command to go on" if args.work_dir else ""
        print(f"interrupted: no output written{kept}", file=sys.stderr)
        return 130
    print(f"wrote {out}")
    return 0
