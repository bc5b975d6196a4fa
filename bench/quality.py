"""Quality per bit on SmolLM2: quantize with each method, score against the original in torch.

Calibration on the first half of the shared eval text, evaluation on chunks of the second half
(llama-perplexity's protocol, pvq_convert.eval). Prints one Markdown row per configuration.

    python -m bench.quality [--methods pvq,pvq-nohess,gptq,gptq-norot,rtn] [--bits 3.25,4.25]
                            [--calib-seqs 16] [--calib-len 512] [--chunks 40] [--calib-source text]

Methods ending in -alloc allocate the rates per tensor (allocate.py) to the same average;
--calib-source generated calibrates on text the model writes itself instead of the first half.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

from models import EVAL_TEXT
from models.smollm2 import ensure
from pvq_convert.allocate import describe
from pvq_convert.eval import chunks, hf_tokenizer, score, split_text
from pvq_convert.hf_model import open_model
from pvq_convert.pvq_format import coded_bits
from pvq_convert.pvq_presets import preset
from pvq_convert.quantize import Method, QuantOptions, quantize_checkpoint
from pvq_convert.torch_model import load_model

CONFIGS = {  # name -> (method, hessian, rotate)
    "pvq": ("pvq", True, True),
    "pvq-alloc": ("pvq", True, True),
    "pvq-nohess": ("pvq", False, True),
    "pvq-nohess-alloc": ("pvq", False, True),
    "gptq": ("gptq", True, True),
    "gptq-norot": ("gptq", True, False),
    "rtn": ("rtn", False, False),
}


def bits_per_weight(method: Method, qm) -> float:
    """Exact bits per quantized linear weight, fields and scales included."""
    if method.name == "pvq":
        n, bits = coded_bits(qm.codes.values())
        return bits / n
    return method.scalar_bits + 16 / method.scalar_block


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--methods", default=",".join(CONFIGS))
    ap.add_argument("--bits", default="3.25,4.25")
    ap.add_argument("--calib-seqs", type=int, default=16)
    ap.add_argument("--calib-len", type=int, default=512)
    ap.add_argument("--chunks", type=int, default=40)
    ap.add_argument("--calib-source", choices=("text", "generated"), default="text")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (1 on a busy machine)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    smol = ensure()
    hf = open_model(smol.hf_dir)
    calib_half, eval_half = split_text(EVAL_TEXT.read_text(encoding="utf-8"))
    tok = hf_tokenizer(smol.hf_dir)
    eval_chunks = chunks(tok.encode(eval_half), 512, args.chunks, tok)
    base = load_model(hf)
    with tempfile.TemporaryDirectory() as tmp:
        calib_file = Path(tmp) / "calib.txt"
        calib_file.write_text(calib_half, encoding="utf-8")
        source = "the first half" if args.calib_source == "text" else "self-generated text"
        print(f"calibration: {args.calib_seqs} x {args.calib_len} tokens of {source}; "
              f"evaluation: {len(eval_chunks)} chunks of 512 of the second half")
        print("| method | bits | exact bits/weight | KLD | PPL | PPL base | same top-1 | time |")
        print("|---|---|---|---|---|---|---|---|")
        for bits in map(float, args.bits.split(",")):
            for name in args.methods.split(","):
                kind, hessian, rotate = CONFIGS[name]
                alloc = name.endswith("-alloc")
                method = Method(kind, layout=None if alloc else preset(bits), hessian=hessian,
                                scalar_bits=int(bits), bits=bits if alloc else None)
                opts = QuantOptions(method, calib_file if args.calib_source == "text" else None,
                                    args.calib_seqs, args.calib_len, rotate=rotate)
                t = time.time()
                qm = quantize_checkpoint(hf, opts, progress=False)
                s = score(qm.model, eval_chunks, base)
                if qm.rates:
                    print(describe(qm.rates), file=sys.stderr)
                print(f"| {name} | {bits} | {bits_per_weight(method, qm):.4f} | {s.mean_kld:.4f} | {s.ppl:.3f} | "
                      f"{s.ppl_base:.3f} | {s.same_top / s.n_tokens:.3f} | {time.time() - t:.0f} s |", flush=True)


if __name__ == "__main__":
    main()
