"""Qwen2.5-Coder-1.5B-Instruct end to end (models/qwen_coder.py): converting it, and running the files.

    python -m bench.qwen_coder convert [--bits 3.25 4.25]   the converter's defaults on 2 cores; wall time and peak
                                                          RSS of each, written to the cache (the progress in
                                                          convert-BITS.log there); run it again after an
                                                          interruption and it goes on (--work-dir)
    python -m bench.qwen_coder run [FILE ...]              pvqrun and pvq.Llama on the F16 reference and each file:
                                                          the answer to CODE_QUESTION (its `def` must compile), and
                                                          on F16 greedy agreement with llama.cpp, on each PVQ file
                                                          the runtime's (--pvq-f32-act) with the converter's torch
                                                          model (16 tokens x 3 prompts)
    python -m bench.qwen_coder memory [--blocks 2]         the converter's defaults at 3.25 on the model's first
                                                          blocks (the real weights, vocabulary and tokenizer): the
                                                          peak RSS and process-tree PSS of each phase, against
                                                          bench.convert_memory's estimate for this shape
    python -m bench.qwen_coder speed [--reps 3]            pp512 and tg128 of the PVQ files (native) against
                                                          llama.cpp's Q2_K, Q3_K_M and Q4_K_M, 2 threads, each engine
                                                          in a process of its own (its peak RSS), reps alternating

The 1.5B conversion takes hours on 2 cores, so it is not part of `make test`.  Results are printed and kept as
JSON in the model's cache directory.
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]      # runtime_clib, as the other benchmarks reach it

from bench.convert_memory import tree_pss  # noqa: E402
from models.qwen_coder import HERE, ensure  # noqa: E402

CODE_QUESTION = "Write a Python function that reverses a string."
PROMPTS = ("def fibonacci(n):", "The capital of France is", "import numpy as np\n\n# a 3x3 identity matrix\n")
N_AGREE = 16


def converted_path(bits: float) -> Path:
    return HERE / f"pvq-{bits}.gguf"


def convert(bits: float) -> dict:
    """The converter's defaults (self-generated calibration: no file is shipped for this model) at `bits`, with a
    work directory in the cache so that a run cut short (the conversion takes hours) goes on where it stopped.  Each
    run is a segment of convert-BITS-segments.json, rewritten every few seconds while it runs: its wall time, the
    converter process's peak RSS (VmHWM, what /usr/bin/time -v reports) and the largest PSS of its process tree
    seen; a segment that was killed keeps what was seen until then."""
    out, work = converted_path(bits), HERE / f"work-{bits}"
    record = HERE / f"convert-{bits}-segments.json"
    segments = json.loads(record.read_text()) if record.exists() and work.exists() else []
    cmd = [sys.executable, "-m", "pvq_convert", str(ensure().hf_dir), "--bits", str(bits), "-o", str(out),
           "--work-dir", str(work)]
    seg = {"started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "wall_s": 0, "peak_rss_kib": 0,
           "tree_pss_kib": 0, "finished": False}
    segments.append(seg)
    t = time.time()
    with (HERE / f"convert-{bits}.log").open("w") as err, (HERE / f"convert-{bits}.out").open("w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=err, text=True)   # the progress bars go to the .log
        while proc.poll() is None:
            try:
                hwm = peak_rss_kib(proc.pid)
            except (OSError, AttributeError):
                hwm = 0
            seg |= {"wall_s": round(time.time() - t), "peak_rss_kib": max(seg["peak_rss_kib"], hwm),
                    "tree_pss_kib": max(seg["tree_pss_kib"], tree_pss(proc.pid) // 1024)}
            record.write_text(json.dumps(segments, indent=1))
            time.sleep(2)
    seg |= {"wall_s": round(time.time() - t), "finished": proc.returncode == 0}
    record.write_text(json.dumps(segments, indent=1))
    if proc.returncode:
        sys.exit(f"conversion at {bits} failed:\n{(HERE / f'convert-{bits}.log').read_text()[-4000:]}")
    summary = [line for line in (HERE / f"convert-{bits}.out").read_text().splitlines() if line.startswith("whole file")]
    return {"bits": bits, "wall_s": sum(s["wall_s"] for s in segments), "segments": len(segments),
            "peak_rss_kib": max(s["peak_rss_kib"] for s in segments),
            "tree_pss_kib": max(s.get("tree_pss_kib", 0) for s in segments), "bytes": out.stat().st_size, "summary": summary}


def first_blocks(hf_dir: Path, blocks: int, out: Path) -> Path:
    """An HF directory of the model cut to its first `blocks` blocks: the same vocabulary matrices, norms and
    tokenizer, config.json's num_hidden_layers set to `blocks`."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    for f in hf_dir.iterdir():
        if f.suffix != ".safetensors" and f.name != "config.json":
            shutil.copy(f, out / f.name)
    config = json.loads((hf_dir / "config.json").read_text()) | {"num_hidden_layers": blocks}
    (out / "config.json").write_text(json.dumps(config, indent=1))
    keep = {}
    with safe_open(str(hf_dir / "model.safetensors"), "pt") as st:
        for name in st.keys():
            m = re.match(r"model\.layers\.(\d+)\.", name)
            if m is None or int(m.group(1)) < blocks:
                keep[name] = st.get_tensor(name)
    save_file(keep, out / "model.safetensors")
    return out


PHASE = re.compile(r"([A-Za-z][\w .-]*?):\s+\d+%\|")     # a progress bar's description


def memory(blocks: int, bits: float = 3.25) -> dict:
    """The converter's defaults at `bits` on the first `blocks` blocks: every phase but the self-generated
    calibration holds one block at a time, so their peaks are those of the whole model's conversion (the
    generation holds every block: convert's first runs measured it on the whole model).  Per phase (the progress
    bar running when a sample was taken, every 0.25 s): the converter's largest RSS (VmRSS) and the largest PSS of
    its process tree, and when it was seen (seconds from the start)."""
    from bench.convert_memory import baseline_pss, estimate
    import torch

    with tempfile.TemporaryDirectory(dir=HERE) as tmp:
        ckpt = first_blocks(ensure().hf_dir, blocks, Path(tmp) / "cut")
        cmd = [sys.executable, "-m", "pvq_convert", str(ckpt), "--bits", str(bits), "-o", str(Path(tmp) / "m.gguf")]
        phases, current, t = {}, ["start"], time.time()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

        def follow():   # the bars redraw with \r: the last description seen is the phase
            for line in proc.stderr:
                for part in line.split("\r"):
                    if m := PHASE.search(part):
                        current[0] = m.group(1)

        reader = threading.Thread(target=follow, daemon=True)
        reader.start()
        while proc.poll() is None:
            try:
                rss = int(re.search(r"VmRSS:\s+(\d+)", Path(f"/proc/{proc.pid}/status").read_text()).group(1)) * 1024
            except (OSError, AttributeError):
                rss = 0
            ph = phases.setdefault(current[0], {"rss": 0, "tree_pss": 0, "from_s": time.time() - t})
            ph |= {"rss": max(ph["rss"], rss), "tree_pss": max(ph["tree_pss"], tree_pss(proc.pid)),
                   "to_s": time.time() - t}
            time.sleep(0.25)
        reader.join()
        if proc.returncode:
            sys.exit(f"conversion failed (exit {proc.returncode})")
        wall = time.time() - t
    cfg = json.loads((ensure().hf_dir / "config.json").read_text())
    kv = cfg["num_key_value_heads"] * cfg["hidden_size"] // cfg["num_attention_heads"]
    workers = torch.get_num_threads() if torch.get_num_threads() > 1 else 0
    est = estimate(blocks, 16, 512, baseline_pss(), workers, dim=cfg["hidden_size"], ffn=cfg["intermediate_size"],
                   vocab=cfg["vocab_size"], kv=kv)
    return {"blocks": blocks, "bits": bits, "wall_s": round(wall), "phases": {
                k: {"rss_gb": round(ph["rss"] / 1e9, 3), "tree_pss_gb": round(ph["tree_pss"] / 1e9, 3),
                    "seen_s": [round(ph["from_s"]), round(ph["to_s"])]} for k, ph in phases.items()},
            "estimate_gb": {phase: round(sum(b for _, b in items) / 1e9, 3) for phase, items in est}}


def code_block(text: str) -> str:
    """The first fenced code block of an answer, or the whole answer."""
    m = re.search(r"```(?:python)?\n(.*?)```", text, re.S)
    return m.group(1) if m else text


def answer(path: Path) -> dict:
    from pvq import Llama
    with Llama(str(path), n_ctx=1024, n_threads=2, verbose=False) as llm:
        t = time.time()
        r = llm.create_chat_completion(messages=[{"role": "user", "content": CODE_QUESTION}], max_tokens=200,
                                       temperature=0)
        text = r["choices"][0]["message"]["content"]
    code = code_block(text)
    try:
        compile(code, "<answer>", "exec")
        compiles = "def " in code
    except SyntaxError:
        compiles = False
    return {"file": path.name, "answer": text, "def_compiles": compiles, "seconds": round(time.time() - t, 1),
            "tokens": r["usage"]["completion_tokens"]}


def greedy_ids(llm, prompt: str, n: int) -> list[int]:
    """The first n greedy tokens after `prompt` (pvq.Llama and llama_cpp.Llama share this API)."""
    out = []
    for tok in llm.generate(llm.tokenize(prompt.encode(), add_bos=False), temp=0.0):
        out.append(int(tok))
        if len(out) == n:
            return out
    return out


def peer_agreement(f16: Path) -> dict:
    """pvq.Llama's greedy tokens against llama.cpp's on the F16 reference: how many of the first N_AGREE agree."""
    from llama_cpp import Llama as PeerLlama

    from pvq import Llama
    with Llama(str(f16), n_ctx=256, n_threads=2, verbose=False) as llm:
        ours = [greedy_ids(llm, p, N_AGREE) for p in PROMPTS]
    peer = PeerLlama(str(f16), n_ctx=256, n_threads=2, verbose=False)
    theirs = [greedy_ids(peer, p, N_AGREE) for p in PROMPTS]
    agree = [next((i for i, (a, b) in enumerate(zip(x, y)) if a != b), N_AGREE) for x, y in zip(ours, theirs)]
    return {"prompts": list(PROMPTS), "agreeing_tokens": agree, "of": N_AGREE}


def torch_agreement(path: Path, hf_dir: Path) -> dict:
    """The runtime with float32 activations (`--pvq-f32-act`) against the converter's torch model of the same file
    (gguf_in.file_model): how many of the first N_AGREE greedy tokens agree, for each prompt."""
    import torch

    from pvq_convert.gguf_in import file_model
    from runtime_clib import Model

    tm = file_model(path, hf_dir)
    rt = Model(path, n_ctx=256, n_threads=2, logits_all=False, pvq_f32_act=True)
    agree = []
    try:
        for prompt in PROMPTS:
            ids = rt.tokenize(prompt)
            rt.reset()
            ours = rt.greedy(ids, N_AGREE)
            theirs = []
            with torch.no_grad():
                for _ in range(N_AGREE):
                    theirs.append(int(tm(ids + theirs)[-1].argmax()))
            agree.append(next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), N_AGREE))
    finally:
        rt.close()
    return {"file": path.name, "prompts": list(PROMPTS), "agreeing_tokens": agree, "of": N_AGREE}


def pvqrun_continuation(path: Path) -> dict:
    """The command-line runtime on the file: 32 greedy tokens after the first prompt."""
    from runtime_clib import run_pvqrun
    r = run_pvqrun(["-m", path, "-p", PROMPTS[0], "-n", 32, "--temp", 0, "-t", 2], timeout=600)
    return {"file": path.name, "returncode": r.returncode, "text": r.stdout.decode(errors="replace"),
            "stderr_tail": r.stderr.decode(errors="replace")[-500:]}


SPEED_PEER = ("q2_k", "q3_k_m", "q4_k_m")


def peak_rss_kib(pid) -> int:
    """A process's peak RSS so far (VmHWM, what /usr/bin/time -v reports), in KiB; pid may be "self"."""
    return int(re.search(r"VmHWM:\s+(\d+)", Path(f"/proc/{pid}/status").read_text()).group(1))


def speed_once(path: Path) -> dict:
    """One repetition in this process: pp512 and tg128 (bench.bench_runtime.one_rep) and the peak RSS."""
    from models import EVAL_TEXT

    from bench import bench_runtime as br
    from bench.file_quality import is_pvq_file
    engine = br.Ours(path) if is_pvq_file(path) else br.Peer(path)
    tokenize = engine.m.tokenize if hasattr(engine, "m") else lambda t: engine.p.tokenize(t.encode())
    prompt = tokenize(EVAL_TEXT.read_text()[:20000])[:br.N_PREFILL]
    pp, tg = br.one_rep(engine, prompt)
    # VmHWM, not getrusage's ru_maxrss: Linux carries the parent's peak into that across fork and exec, and the
    # parent (speed) has just quantized the peer's files in-process
    return {"pp512": pp, "tg128": tg, "peak_rss_kib": peak_rss_kib("self")}


def speed(reps: int) -> dict:
    """Every engine once per rep, in turn, each in a fresh process; medians."""
    import statistics

    from bench.results import SUBJECTS, peer_file
    files = {f"PVQ {b}": converted_path(b) for b in (3.25, 4.25) if converted_path(b).is_file()}
    files |= {name.upper(): peer_file(SUBJECTS["qwen-coder"], name) for name in SPEED_PEER}
    runs = {name: [] for name in files}
    for _ in range(reps):
        for name, path in files.items():
            out = subprocess.run([sys.executable, "-m", "bench.qwen_coder", "speed-once", str(path)],
                                 capture_output=True, text=True, check=True)
            runs[name].append(json.loads(out.stdout.splitlines()[-1]))
            print(name, runs[name][-1], flush=True)
    return {name: {"file_bytes": files[name].stat().st_size,
                   **{k: statistics.median(r[k] for r in rs) for k in ("pp512", "tg128", "peak_rss_kib")}}
            for name, rs in runs.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("step", choices=("convert", "memory", "run", "speed", "speed-once"))
    ap.add_argument("files", nargs="*", type=Path, help="run: PVQ files (default: those `convert` made)")
    ap.add_argument("--bits", type=float, nargs="+", default=[3.25, 4.25])
    ap.add_argument("--reps", type=int, default=3, help="speed: repetitions")
    ap.add_argument("--blocks", type=int, default=2, help="memory: the model's first blocks")
    args = ap.parse_args()
    if args.step == "speed-once":
        print(json.dumps(speed_once(args.files[0])))
        return
    paths = ensure()
    if args.step == "memory":
        result = memory(args.blocks)
        (HERE / "memory.json").write_text(json.dumps(result, indent=1))
        print(json.dumps(result, indent=1))
        return
    if args.step == "speed":
        result = speed(args.reps)
        (HERE / "speed.json").write_text(json.dumps(result, indent=1))
        print(json.dumps(result, indent=1))
        return
    if args.step == "convert":
        for b in args.bits:
            r = convert(b)
            (HERE / f"convert-{b}.json").write_text(json.dumps(r, indent=1))
            print(json.dumps(r, indent=1))
        return
    files = args.files or [p for p in (converted_path(b) for b in args.bits) if p.is_file()]
    result = {"agreement_f16_vs_llama.cpp": peer_agreement(paths.f16_gguf),
              "agreement_pvq_vs_torch": [torch_agreement(f, paths.hf_dir) for f in files],
              "pvqrun": [pvqrun_continuation(f) for f in [paths.f16_gguf, *files]],
              "answers": [answer(f) for f in [paths.f16_gguf, *files]]}
    (HERE / "run.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
