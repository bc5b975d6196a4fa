"""Peak memory of a streamed conversion, against the per-block estimate of docs/pipeline.md ("Peak memory").

A synthetic Llama-7B-shaped checkpoint (random bf16 weights in sharded safetensors, a few blocks, the small
SentencePiece tokenizer of models/spm_fixture.py padded to the vocabulary) is converted with the converter's
defaults (PVQ 3.25 with the Hessian, the vocabulary coded, 3 passes of scale tuning) on the CPU, calibrated on
the shared eval text only (--calib-generated 0: generating text needs the whole model, the one phase that
does). Prints the estimate item by item, then the measured peaks and their ratio to it:

    python -m bench.convert_memory [--blocks 2] [--calib-seqs 16] [--dir DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

GB = 1e9


def tree_pss(root: int) -> int:
    """Proportional set size of a process and its descendants, bytes: shared pages (the row workers'
    shared-memory tensors, the libraries) counted once over the tree, not once per process."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parents[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                pass
    tree, grew = {root}, True
    while grew:
        more = {pid for pid, ppid in parents.items() if ppid in tree} - tree
        tree |= more
        grew = bool(more)
    total = 0
    for pid in tree:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                total += next(int(line.split()[1]) for line in f if line.startswith("Pss:")) * 1024
        except (OSError, StopIteration):
            pass
    return total


# Starts a command and reports its children's peak RSS, for peak_memory.  Linux carries a process's high-water
# mark across exec from the image it replaced, and a child starts as a copy of its parent: started straight from
# a large process (pytest with torch loaded: 2.1 GB) even `python -c "print(1)"` reports the parent's size.  The
# children of this small launcher start from its size instead.
LAUNCHER = """import resource, subprocess, sys
rc = subprocess.call(sys.argv[2:])
with open(sys.argv[1], "w") as f:
    f.write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))
sys.exit(rc)
"""


def peak_memory(cmd: list[str], interval: float = 0.25, **kw) -> tuple[int, int, subprocess.CompletedProcess]:
    """Run cmd -> (its peak resident set size as /usr/bin/time -v reports it (the largest of the process and
    its waited-for children, bytes), the peak of tree_pss sampled every `interval` s (the launcher's few MB
    included), the finished process)."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "maxrss"
        proc = subprocess.Popen([sys.executable, "-c", LAUNCHER, str(report), *cmd], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, **kw)
        peak, done = [0], threading.Event()

        def sample():
            while not done.is_set():
                peak[0] = max(peak[0], tree_pss(proc.pid))
                done.wait(interval)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        out = proc.stdout.read()
        proc.wait()
        done.set()
        sampler.join()
        maxrss_kib = int(report.read_text()) if report.is_file() else 0
    return maxrss_kib * 1024, peak[0], subprocess.CompletedProcess(cmd, proc.returncode, out)


def synthetic_checkpoint(out: Path, blocks: int, dim: int = 4096, ffn: int = 11008, vocab: int = 32000,
                         heads: int = 32, kv_heads: int = 32, seed: int = 0) -> Path:
    """A Llama-shaped HF directory with random bf16 weights (std 1/sqrt(columns)), one safetensors shard per
    block plus one for the vocabulary matrices, an index, and models/spm_fixture.py's tokenizer."""
    import torch
    from safetensors.torch import save_file

    from models.spm_fixture import build

    build(out)                                  # the tokenizer and its files; the weights are replaced below
    (out / "model.safetensors").unlink()
    config = json.loads((out / "config.json").read_text())
    config |= dict(hidden_size=dim, intermediate_size=ffn, num_hidden_layers=blocks, num_attention_heads=heads,
                   num_key_value_heads=kv_heads, vocab_size=vocab, torch_dtype="bfloat16")
    (out / "config.json").write_text(json.dumps(config, indent=1))
    gen = torch.Generator().manual_seed(seed)
    kv = kv_heads * dim // heads

    def mat(rows, cols):
        return (torch.randn(rows, cols, generator=gen) / cols ** 0.5).to(torch.bfloat16)

    def norm():
        return (1 + 0.1 * torch.randn(dim, generator=gen)).to(torch.bfloat16)

    shards = [{"model.embed_tokens.weight": mat(vocab, dim), "lm_head.weight": mat(vocab, dim),
               "model.norm.weight": norm()}]
    for i in range(blocks):
        p = f"model.layers.{i}."
        shards.append({p + "input_layernorm.weight": norm(), p + "post_attention_layernorm.weight": norm(),
                       p + "self_attn.q_proj.weight": mat(dim, dim), p + "self_attn.k_proj.weight": mat(kv, dim),
                       p + "self_attn.v_proj.weight": mat(kv, dim), p + "self_attn.o_proj.weight": mat(dim, dim),
                       p + "mlp.gate_proj.weight": mat(ffn, dim), p + "mlp.up_proj.weight": mat(ffn, dim),
                       p + "mlp.down_proj.weight": mat(dim, ffn)})
    weight_map = {}
    for k, tensors in enumerate(shards):
        name = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(tensors, out / name)
        weight_map |= dict.fromkeys(tensors, name)
    (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return out


def estimate(blocks: int, n_seq: int, seq_len: int, base: int, workers: int, dim: int = 4096, ffn: int = 11008,
             vocab: int = 32000, kv: int = 4096) -> list[tuple[str, list[tuple[str, float]]]]:
    """The converter's memory at the three moments that could be its peak, item by item (bytes), for an untied
    checkpoint of `blocks` blocks converted on the CPU with `workers` row workers (docs/pipeline.md explains
    each item).  base: one process with torch imported, before any tensor."""
    from pvq_convert.rotate import ROTATE_ROWS

    block = 2 * dim * dim + 2 * dim * kv + 3 * dim * ffn        # linear weights of one block
    vocab_fp32 = 2 * vocab * dim * 4                            # embedding and output layer, float32
    codes = lambda weights: weights * 2                         # noqa: E731 (int64 index and gain code per 8 weights;
    # the codes of finished matrices wait on disk)
    acts = n_seq * seq_len * dim * 4
    H_down = ffn * ffn * 8
    return [
        ("rotating the vocabulary matrices (rotate.rotate_globals)", [
            ("interpreter and torch", base),
            ("embedding and output layer as read, float32", vocab_fp32),
            (f"{ROTATE_ROWS} of their rows in float64, their Hadamard transform and the two products after it",
             4 * min(vocab, ROTATE_ROWS) * dim * 8),
            ("the embedding rotated, float32", vocab * dim * 4)]),
        (f"GPTQ of block {blocks - 1}'s down_proj, {workers} row workers", [
            (f"interpreter and torch, {1 + workers} processes", (1 + workers) * base),
            ("embedding and output layer (decoded codes), float32", vocab_fp32),
            ("the block, float32", block * 4),
            ("calibration activations, float32, two lists while a pass moves them", 2 * acts),
            ("down_proj's input Hessian, float64, shared with the workers", H_down),
            ("gptq.inverse_hessian_factor, once, before the workers start: two of the damped copy, L, H^-1, U; "
             "U then shared", 2 * H_down),
            ("the workers' rows as W and Q, float64, and their codes", dim * ffn * (8 + 8 + 2))]),
        ("a scale-tuning step (stream.streamed_backward)", [
            ("interpreter and torch", base),
            ("embedding and output layer (decoded codes), float32", vocab_fp32),
            ("one block read back, float32, and its largest matrix's codes (quantize.CodeStore)", block * 4
             + codes(dim * ffn)),
            ("one block's graph: ~10 dim-wide and 6 FFN-wide tensors per token, attention", seq_len * (10 * dim + 6 * ffn) * 4
             + 32 * seq_len * seq_len * 4 * 2),
            ("logits, log-softmax, target, their products and gradients, float32", 8 * seq_len * vocab * 4)]),
    ]


def baseline_pss() -> int:
    """tree_pss of an interpreter that has imported the converter and torch."""
    _, pss, _ = peak_memory([sys.executable, "-c", "import time, pvq_convert.quantize; time.sleep(2)"],
                            env=dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1])))
    return pss


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--blocks", type=int, default=2)
    ap.add_argument("--calib-seqs", type=int, default=16)
    ap.add_argument("--calib-len", type=int, default=512)
    ap.add_argument("--dir", type=Path, help="where the checkpoint goes (default: a temporary directory)")
    args = ap.parse_args()
    import torch

    from models import EVAL_TEXT

    root = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = synthetic_checkpoint((args.dir or Path(tmp)) / "llama7b-shaped", args.blocks)
        base = baseline_pss()
        cmd = [sys.executable, "-m", "pvq_convert", str(ckpt), "--bits", "3.25", "--calib", str(EVAL_TEXT),
               "--calib-generated", "0", "--calib-seqs", str(args.calib_seqs), "--calib-len", str(args.calib_len),
               "-q", "-o", str(Path(tmp) / "out.gguf")]
        t = time.time()
        maxrss, pss, run = peak_memory(cmd, env=dict(os.environ, PYTHONPATH=str(root)))
        wall = time.time() - t
    if run.returncode:
        sys.exit(f"conversion failed:\n{run.stdout}")
    workers = torch.get_num_threads() if torch.get_num_threads() > 1 else 0
    phases = estimate(args.blocks, args.calib_seqs, args.calib_len, base, workers)
    for phase, items in phases:
        print(f"\n{phase}:")
        for what, b in items:
            print(f"  {b / GB:7.2f} GB  {what}")
        print(f"  {sum(b for _, b in items) / GB:7.2f} GB  total")
    peak = max(sum(b for _, b in items) for _, items in phases)
    print(f"\n{args.blocks} blocks, {args.calib_seqs} x {args.calib_len} calibration tokens, {wall / 60:.1f} min")
    print(f"estimated peak {peak / GB:.2f} GB; measured: process tree {pss / GB:.2f} GB (PSS, {pss / peak:.2f} x the "
          f"estimate), largest process {maxrss / GB:.2f} GB (ru_maxrss, as /usr/bin/time -v)")


if __name__ == "__main__":
    main()
