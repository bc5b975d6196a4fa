"""docs/ablations.md: quality per bit of the linear layers for every method on SmolLM2-135M-Instruct (the
embedding and output kept F16, torch fake-quant), beside llama.cpp's own types. The files a user gets, whole,
on two held-out texts, are bench/results.py's (docs/results.md).

Protocol (issue 5): calibrate on the first half of the shared eval text, evaluate 40 chunks of 512
tokens of the second half with llama-perplexity's chunking (pvq_convert.eval), tokenized by llama.cpp
on the F16 reference.  Our methods: torch fake-quant of exactly the weights the GGUF file holds,
against the unquantized torch model; the PVQ rows also write their GGUF file (its size is reported).
llama.cpp's types: llama_model_quantize on the F16 reference (no importance matrix), logits through
llama-cpp-python, against the F16 reference's logits through llama-cpp-python.

The whole run takes hours on 2 cores, so each row is cached as JSON (--cache) as soon as it is
measured and later runs skip it: run again after an interruption, and it goes on where it stopped.

    python -m bench.ablations [--rows all | NAME,NAME] [--chunks 40] [--calib-seqs 16] [--calib-len 512]
                            [--cache DIR] [--no-write]

Row names: pvq-tune (the converter's default: Hessian GPTQ, then scale tuning), pvq (Hessian GPTQ only),
pvq-alloc (with per-tensor rates), pvq-nohess, gptq, gptq-norot, rtn, each with @3.25 or @4.25 (e.g.
pvq@3.25), and llama.cpp's q3_k_m, q4_k_m, iq4_xs, q4_0.
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

from models import EVAL_TEXT
from models.smollm2 import CACHE, ensure
from pvq_convert.cli import TUNE_EPOCHS
from pvq_convert.eval import Scores, chunks, gguf_tokenizer, score, split_text

ROOT = Path(__file__).resolve().parents[1]
OURS = {  # name -> (method, hessian, rotate, allocate, scale-tuning epochs)
    "rtn": ("rtn", False, False, False, 0),
    "gptq-norot": ("gptq", True, False, False, 0),
    "gptq": ("gptq", True, True, False, 0),
    "pvq-nohess": ("pvq", False, True, False, 0),
    "pvq": ("pvq", True, True, False, 0),
    "pvq-alloc": ("pvq", True, True, True, 0),
    "pvq-tune": ("pvq", True, True, False, TUNE_EPOCHS),
}
PEER = ("q3_k_m", "q4_k_m", "iq4_xs", "q4_0")
ALL_ROWS = [f"{name}@{bits}" for bits in (3.25, 4.25) for name in OURS] + list(PEER)


def setup(args):
    smol = ensure()
    calib_half, eval_half = split_text(EVAL_TEXT.read_text(encoding="utf-8"))
    tok = gguf_tokenizer(smol.f16_gguf)
    return smol, calib_half, chunks(tok.encode(eval_half), 512, args.chunks, tok)


def measure_ours(name: str, bits: float, smol, calib_half: str, eval_chunks, args) -> dict:
    from pvq_convert.convert import convert
    from pvq_convert.hf_model import open_model
    from pvq_convert.pvq_format import coded_bits
    from pvq_convert.pvq_presets import preset
    from pvq_convert.quantize import Method, QuantOptions, quantize_checkpoint
    from pvq_convert.torch_model import load_model

    kind, hessian, rotate, alloc, tune = OURS[name]
    method = Method(kind, layout=None if alloc else preset(bits), hessian=hessian, scalar_bits=int(bits),
                    bits=bits if alloc else None, tune_epochs=tune)  # the vocabulary stays F16 here
    hf = open_model(smol.hf_dir)
    with tempfile.TemporaryDirectory() as tmp:
        calib_file = Path(tmp) / "calib.txt"
        calib_file.write_text(calib_half, encoding="utf-8")
        opts = QuantOptions(method, calib_file, args.calib_seqs, args.calib_len, rotate=rotate)
        t = time.time()
        qm = quantize_checkpoint(hf, opts, progress=not args.quiet)
        seconds = time.time() - t
        size = None
        if kind == "pvq":
            out = convert(smol.hf_dir, Path(tmp) / "m.gguf", "f16", progress=False, quant=opts, quantized=qm)
            size = out.stat().st_size
    if kind == "pvq":
        n, bits_total = coded_bits(qm.codes.values())
        bpw = bits_total / n
    else:
        bpw = method.scalar_bits + 16 / method.scalar_block
    s = score(qm.model, eval_chunks, load_model(hf))
    return row(s, bpw=bpw, size=size, seconds=seconds)


def measure_peer(name: str, smol, eval_chunks, args) -> dict:
    import llama_cpp

    path = args.cache / f"smollm2-{name}.gguf"
    if not path.exists():
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{name.upper()}")
        params.nthread = 2
        tmp = path.with_suffix(".tmp")
        if llama_cpp.llama_model_quantize(str(smol.f16_gguf).encode(), str(tmp).encode(), params) != 0:
            raise RuntimeError(f"llama_model_quantize failed for {name}")
        tmp.replace(path)
    s = score(peer_logits(path), eval_chunks, peer_logits(smol.f16_gguf))
    bpw = peer_bits_per_weight(path)
    return row(s, bpw=bpw, size=path.stat().st_size, seconds=None)


def peer_logits(path: Path):
    """token ids -> logits (T, vocab) of a GGUF file through llama-cpp-python, from an empty cache."""
    import llama_cpp
    llm = llama_cpp.Llama(str(path), n_ctx=512, n_batch=512, n_threads=2, n_threads_batch=2, logits_all=True,
                          verbose=False)

    def logits(tokens: list[int]) -> torch.Tensor:
        llm.reset()
        llm.eval(tokens)
        return torch.from_numpy(llm.scores[:len(tokens)].copy())
    return logits


def peer_bits_per_weight(path: Path) -> float:
    """Bits per weight of the 2-D block tensors (the linear layers) of a llama.cpp file."""
    import gguf
    reader = gguf.GGUFReader(path)
    n = nbytes = 0
    for t in reader.tensors:
        if t.name.startswith("blk.") and len(t.shape) == 2:
            n += int(t.n_elements)
            nbytes += int(t.n_bytes)
    return nbytes * 8 / n


def row(s: Scores, **extra) -> dict:
    return {"kld": s.mean_kld, "ppl": s.ppl, "ppl_base": s.ppl_base, "same_top": s.same_top / s.n_tokens,
            "tokens": s.n_tokens, **extra}


def markdown(results: dict[str, dict], args) -> str:
    lines = ["# Ablations: quality per bit of the linear layers (SmolLM2-135M-Instruct)", "",
             "Produced by `python -m bench.ablations` "
             f"(calibration: {args.calib_seqs} x {args.calib_len} tokens of the first half of "
             "`../shared/data/eval/debian-reference.txt`; evaluation: "
             f"{args.chunks} chunks of 512 tokens of the second half, llama-perplexity's chunking, "
             "tokenized by llama.cpp). Our methods: torch fake-quant of exactly the weights the file holds, "
             "KLD against the unquantized model. llama.cpp: its quantizer on the F16 reference (no importance "
             "matrix), logits through llama-cpp-python, KLD against the F16 file through llama-cpp-python. "
             "Bits per weight: of the linear layers (PVQ: fields and fp16 row scales; llama.cpp: the block "
             "tensors' bytes); embeddings and output stay F16 in our files. The scalar baselines (rtn, gptq) "
             "have no file format: they are evaluated in torch only.", "",
             f"Machine: {platform.machine()}, {torch.get_num_threads()} torch threads; rows measured "
             "over several runs (each row cached as JSON). Quantize time: wall time of the row's quantization "
             "on a 2-core machine shared with other jobs, not a conversion time (docs/pipeline.md). Rows: "
             "pvq-tune is the converter's default (Hessian GPTQ, then scale tuning), pvq is Hessian GPTQ "
             "alone, pvq-alloc adds per-tensor rates, pvq-nohess is plain nearest-point PVQ.", "",
             "| row | bits/weight (linear) | file size | KLD | PPL | PPL base | same top-1 | quantize time |",
             "|---|---|---|---|---|---|---|---|"]
    for name in ALL_ROWS:
        r = results.get(name)
        if r is None:
            lines.append(f"| {name} | not measured yet | | | | | | |")
            continue
        size = f"{r['size'] / 1e6:.1f} MB" if r.get("size") else "—"
        secs = f"{r['seconds']:.0f} s" if r.get("seconds") else "—"
        lines.append(f"| {name} | {r['bpw']:.4f} | {size} | {r['kld']:.4f} | {r['ppl']:.3f} | {r['ppl_base']:.3f} | "
                     f"{r['same_top']:.3f} | {secs} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.ablations")
    ap.add_argument("--rows", default="all", help="comma-separated row names, or all")
    ap.add_argument("--chunks", type=int, default=40)
    ap.add_argument("--calib-seqs", type=int, default=16)
    ap.add_argument("--calib-len", type=int, default=512)
    ap.add_argument("--cache", type=Path, default=CACHE / "results",
                    help="where rows (JSON) and llama.cpp's quantized files are kept (default: %(default)s)")
    ap.add_argument("--no-write", action="store_true", help="do not rewrite docs/ablations.md")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    args = ap.parse_args()
    rows = ALL_ROWS if args.rows == "all" else args.rows.split(",")
    unknown = [r for r in rows if r not in ALL_ROWS]
    if unknown:
        sys.exit(f"unknown rows {unknown}; choose from {', '.join(ALL_ROWS)}")
    torch.set_num_threads(2)
    args.cache.mkdir(parents=True, exist_ok=True)
    tag = f"c{args.calib_seqs}x{args.calib_len}-e{args.chunks}"

    def cached(name: str) -> Path:
        return args.cache / f"{name}-{tag}.json"

    todo = [r for r in rows if not cached(r).exists()]
    if todo:
        smol, calib_half, eval_chunks = setup(args)
    for name in todo:
        print(f"measuring {name} ...", file=sys.stderr, flush=True)
        if name in PEER:
            r = measure_peer(name, smol, eval_chunks, args)
        else:
            kind, bits = name.split("@")
            r = measure_ours(kind, float(bits), smol, calib_half, eval_chunks, args)
        assert all(math.isfinite(v) for v in (r["kld"], r["ppl"]))
        cached(name).write_text(json.dumps(r, indent=1))
        print(f"{name}: {json.dumps(r)}", flush=True)
    results = {name: json.loads(cached(name).read_text()) for name in ALL_ROWS if cached(name).exists()}
    text = markdown(results, args)
    if args.no_write:
        print(text)
    else:
        (ROOT / "docs" / "ablations.md").write_text(text, encoding="utf-8")
        print(f"wrote {ROOT / 'docs' / 'ablations.md'} ({len(results)} of {len(ALL_ROWS)} rows)")


if __name__ == "__main__":
    main()
