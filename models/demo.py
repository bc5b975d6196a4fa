"""`make demo`: fetch SmolLM2-135M-Instruct, convert it to PVQ at 3.25 bits per weight, and generate with the
C runtime.

The conversion is Hessian-aware PVQ (GPTQ-style, calibrated on 8 x 512 tokens of the shared eval text's first
half, then scale tuning; about 10 minutes on 2 cores). Its output is kept in $PVQ_CACHE under a name that
changes with the converter's inputs (models/smollm2.py, pvq_gguf), so a second `make demo` only generates."""
from __future__ import annotations

import shutil
import subprocess

from models.smollm2 import pvq_gguf

PROMPT = "The three most useful Debian commands for a new user are"


def main() -> None:
    out = pvq_gguf(3.25)
    print(f"SmolLM2-135M-Instruct as PVQ 3.25 bits/weight: {out} ({out.stat().st_size / 2**20:.0f} MiB)")
    pvqrun = shutil.which("pvqrun")
    if pvqrun is None:
        raise SystemExit("pvqrun is not on the PATH: run `make setup`")
    cmd = [pvqrun, "-m", str(out), "-p", PROMPT, "-n", "48", "--temp", "0", "-t", "2", "-v"]
    print("$ pvqrun", " ".join(cmd[1:]), flush=True)
    subprocess.run(cmd, check=True)


if __name__ == "__main__":
    main()
