"""pvq_convert: Hugging Face checkpoints -> GGUF, unquantized or with Pyramid Vector Quantization."""
import hashlib
from pathlib import Path


class ConvertError(Exception):
    """A problem with the user's input or output path; the CLI prints it as one line and exits 1."""


def source_digest() -> str:
    """sha256 of the converter's own source: what a kept result (a work directory's steps, a cached file) was
    made by."""
    h = hashlib.sha256()
    for src in sorted(Path(__file__).parent.glob("*.py")):
        h.update(src.read_bytes())
    return h.hexdigest()
