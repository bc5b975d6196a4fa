"""`make demo`: fetch SmolLM2-135M-Instruct, convert it to GGUF, and generate with the C runtime."""
from __future__ import annotations

import shutil
import subprocess

from models.smollm2 import HERE, ensure
from pvq_convert.convert import convert

PROMPT = "The three most useful Debian commands for a new user are"


def main() -> None:
    model = ensure()
    out = convert(model.hf_dir, HERE / "demo-q8_0.gguf", "q8_0")
    print(f"converted {model.hf_dir.name} -> {out} ({out.stat().st_size / 2**20:.0f} MiB)")
    pvqrun = shutil.which("pvqrun")
    if pvqrun is None:
        raise SystemExit("pvqrun is not on the PATH: run `make setup`")
    cmd = [pvqrun, "-m", str(out), "-p", PROMPT, "-n", "48", "--temp", "0", "-t", "2", "-v"]
    print("$ pvqrun", " ".join(cmd[1:]), flush=True)
    subprocess.run(cmd, check=True)


if __name__ == "__main__":
    main()
