"""docs/results.md and docs/rd_smollm2.png: whole files against llama.cpp's, on SmolLM2-135M-Instruct, on two texts
no calibration reads.

Protocol. Each PVQ row is a file written by the converter as a user runs it (`python -m pvq_convert` with the
row's flags: the defaults plus `--calib` on the first half of the shared eval text, or the default
self-generated calibration); each llama.cpp row is llama_model_quantize on the F16 reference (no importance
matrix). Every file is scored by bench.file_quality: run by its own runtime (pvq's bindings, llama-cpp-python),
KLD against the F16 reference run by llama.cpp, 40 chunks of 512 tokens of each evaluation text (prose: the
eval text's second half; code: Python's argparse, dataclasses and enum modules). Bits per parameter: 8 x file
bytes / the checkpoint's 134 515 008 parameters; bits per linear weight: the block matrices' bytes (PVQ: with
their row scales) per weight.

The whole run takes hours on 2 cores, so each row is cached as JSON (--cache) as soon as it is measured and later
runs skip it: run again after an interruption and it goes on where it stopped.

    python -m bench.results [--rows all | NAME,NAME] [--chunks 40] [--cache DIR] [--no-write]
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from models.smollm2 import CACHE, calibration_text, ensure, pvq_gguf

from bench.file_quality import TEXTS, file_scores

ROOT = Path(__file__).resolve().parents[1]
PRESET_BITS = (2.25, 2.75, 3.25, 3.75, 4.25, 4.5)
DEFAULT_BITS = sorted(PRESET_BITS + (4.0,))  # 4.0 lies between presets: the converter allocates rates per tensor
CALIB = "@calib"  # stands for --calib <the eval text's first half>
OURS = {f"pvq@{b}": ("--bits", str(b), "--calib", CALIB) for b in DEFAULT_BITS}
OURS |= {f"pvq-gen@{b}": ("--bits", str(b)) for b in (3.25, 4.0, 4.5)}      # self-generated calibration
OURS |= {f"pvq-file@{b}": ("--bits", str(b), "--calib", CALIB, "--calib-generated", "0") for b in (3.25, 4.25)}
OURS |= {"pvq@3.75-embd4.25": ("--bits", "3.75", "--embd-bits", "4.25", "--calib", CALIB),
         "pvq-keep-embd@3.25": ("--bits", "3.25", "--keep-embd", "--calib", CALIB)}
PEER = ("q2_k", "q3_k_s", "q3_k_m", "q4_0", "iq4_xs", "q4_k_m", "q5_k_m", "q6_k", "q8_0")
ALL_ROWS = list(OURS) + list(PEER)


def converted(name: str) -> Path:
    """The row's PVQ file, converted once per set of converter inputs (models.smollm2.pvq_gguf's cache)."""
    bits, *extra = OURS[name][1:]
    return pvq_gguf(float(bits), tuple(str(calibration_text()) if a == CALIB else a for a in extra))


def peer_file(name: str, cache: Path) -> Path:
    import llama_cpp
    path = cache / f"smollm2-{name}.gguf"
    if not path.exists():
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{name.upper()}")
        params.nthread = 2
        tmp = path.with_suffix(".tmp")
        if llama_cpp.llama_model_quantize(str(ensure().f16_gguf).encode(), str(tmp).encode(), params) != 0:
            raise RuntimeError(f"llama_model_quantize failed for {name}")
        tmp.replace(path)
    return path


def linear_bits(path: Path) -> float:
    """Bits per weight of the block matrices (the linear layers), PVQ row scales included."""
    import gguf
    from pvq_convert.pvq_format import SCALE_SUFFIX, register_gguf_types
    register_gguf_types()
    n = nbytes = 0
    for t in gguf.GGUFReader(path).tensors:
        if t.name.startswith("blk.") and (len(t.shape) == 2 or t.name.endswith(SCALE_SUFFIX)):
            n += 0 if t.name.endswith(SCALE_SUFFIX) else int(t.n_elements)
            nbytes += int(t.n_bytes)
    return nbytes * 8 / n


def measure(name: str, args) -> dict:
    from pvq_convert.convert import checkpoint_parameters
    from pvq_convert.hf_model import open_model
    path = converted(name) if name in OURS else peer_file(name, args.cache)
    size = path.stat().st_size
    params = checkpoint_parameters(open_model(ensure().hf_dir))
    scores = file_scores(path, TEXTS, args.chunks)
    return {"file": path.name, "bytes": size, "bits_per_param": 8 * size / params, "bits_per_linear": linear_bits(path),
            "texts": {t: {"kld": s.mean_kld, "ppl": s.ppl, "ppl_base": s.ppl_base, "same_top": s.same_top / s.n_tokens,
                          "tokens": s.n_tokens} for t, s in scores.items()}}


def markdown(results: dict[str, dict], args) -> str:
    lines = ["# Whole files against llama.cpp's (SmolLM2-135M-Instruct)", "",
             f"Produced by `python -m bench.results` ({args.chunks} chunks of 512 tokens per text). " + __doc__.split(
                 "\n\n")[1].replace("\n", " "), "",
             "Evaluation texts: **prose**, the second half of `../shared/data/eval/debian-reference.txt` (the "
             "`--calib` rows calibrate on its first half); **code**, Python source of another kind than any "
             "calibration text: the `argparse`, `dataclasses` and `enum` modules of the Python standard library "
             "(3.11, as the machine's Python ships them; `models.code_text`). Rows: `pvq@B` is `python -m "
             "pvq_convert --bits B --calib <first half>` (by default 12 of the 16 calibration sequences are then "
             "windows of the file and 4 text the model writes itself; for 4.0, between two presets, the converter "
             "chooses a preset per tensor, docs/pipeline.md), `pvq-gen@B` the same without `--calib` (all "
             "16 self-generated), `pvq-file@B` `--calib` with `--calib-generated 0` (all 16 windows of the first "
             "half), `pvq-keep-embd` keeps the embedding and output F16 (the files before they were coded), "
             "`embd4.25` codes the vocabulary matrix at 4.25.", "",
             "![KLD against file size](rd_smollm2.png)", ""]
    head = "| row | file MB | bits / parameter | bits / linear weight |"
    rule = "|---|---|---|---|"
    for t in TEXTS:
        head += f" KLD {t} | PPL {t} (F16) | same top-1 {t} |"
        rule += "---|---|---|"
    lines += [head, rule]
    for name in sorted(results, key=lambda n: results[n]["bytes"]):
        r = results[name]
        line = f"| {name} | {r['bytes'] / 1e6:.1f} | {r['bits_per_param']:.3f} | {r['bits_per_linear']:.3f} |"
        for t in TEXTS:
            s = r["texts"][t]
            line += f" {s['kld']:.4f} | {s['ppl']:.3f} ({s['ppl_base']:.3f}) | {s['same_top']:.3f} |"
        lines.append(line)
    missing = [n for n in ALL_ROWS if n not in results]
    if missing:
        lines += ["", "Not measured yet: " + ", ".join(missing) + "."]
    return "\n".join(lines) + "\n"


def plot(results: dict[str, dict], out: Path) -> None:
    """KLD (log scale) against file size, one panel per evaluation text: the PVQ presets as a curve, llama.cpp's
    types as another, the other PVQ rows as points."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(TEXTS), figsize=(6 * len(TEXTS), 4.5))
    for ax, t in zip(axes, TEXTS):
        def series(names):
            pts = sorted((results[n]["bytes"] / 1e6, results[n]["texts"][t]["kld"], n) for n in names if n in results)
            return [p[0] for p in pts], [p[1] for p in pts], [p[2] for p in pts]
        for names, style, label in ((PEER, "s-", "llama.cpp (no imatrix)"),
                                    ([f"pvq@{b}" for b in DEFAULT_BITS], "o-", "PVQ defaults, --calib"),
                                    ([n for n in OURS if not n.startswith("pvq@") or n.count("-")], "^",
                                     "PVQ, other settings")):
            x, y, labels = series(names)
            ax.plot(x, y, style, label=label)
            for xi, yi, n in zip(x, y, labels):
                ax.annotate(n, (xi, yi), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set_yscale("log")
        ax.set_xlabel("file size (MB)")
        ax.set_ylabel(f"KLD against F16, {t} text")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("SmolLM2-135M-Instruct: KL divergence against file size (held-out text)")
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.results")
    ap.add_argument("--rows", default="all", help="comma-separated row names, or all")
    ap.add_argument("--chunks", type=int, default=40)
    ap.add_argument("--cache", type=Path, default=CACHE / "results-files",
                    help="where rows (JSON) and llama.cpp's files are kept; PVQ files stay in models.smollm2's cache (default: %(default)s)")
    ap.add_argument("--no-write", action="store_true", help="do not rewrite docs/results.md and the plot")
    args = ap.parse_args()
    rows = ALL_ROWS if args.rows == "all" else args.rows.split(",")
    unknown = [r for r in rows if r not in ALL_ROWS]
    if unknown:
        sys.exit(f"unknown rows {unknown}; choose from {', '.join(ALL_ROWS)}")
    args.cache.mkdir(parents=True, exist_ok=True)

    def cached(name: str) -> Path:
        return args.cache / f"{name}-e{args.chunks}.json"

    for name in rows:
        if cached(name).exists():
            continue
        print(f"measuring {name} ...", file=sys.stderr, flush=True)
        r = measure(name, args)
        assert all(math.isfinite(s["kld"]) for s in r["texts"].values())
        cached(name).write_text(json.dumps(r, indent=1))
        print(f"{name}: {json.dumps(r)}", flush=True)
    results = {name: json.loads(cached(name).read_text()) for name in ALL_ROWS if cached(name).exists()}
    text = markdown(results, args)
    if args.no_write:
        print(text)
        return
    (ROOT / "docs" / "results.md").write_text(text, encoding="utf-8")
    plot(results, ROOT / "docs" / "rd_smollm2.png")
    print(f"wrote docs/results.md and docs/rd_smollm2.png ({len(results)} of {len(ALL_ROWS)} rows)")


if __name__ == "__main__":
    main()
