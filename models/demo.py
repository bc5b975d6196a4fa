"""`make demo`: fetch SmolLM2-135M-Instruct, convert it to GGUF, and show what the toolchain does."""
from __future__ import annotations

from models.smollm2 import HERE, ensure
from pvq_convert.convert import convert


def main() -> None:
    model = ensure()
    out = convert(model.hf_dir, HERE / "demo-f16.gguf", "f16")
    print(f"converted {model.hf_dir.name} -> {out} ({out.stat().st_size / 2**20:.0f} MiB)")


if __name__ == "__main__":
    main()
