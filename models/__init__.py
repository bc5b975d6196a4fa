"""Scripts that fetch and prepare the models the demo, tests and benchmarks use."""
import os
from pathlib import Path

# The project's shared data (eval text, tokenizer test vectors) lies beside the checkout.
SHARED_DATA = Path(os.environ.get("PVQ_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
EVAL_TEXT = SHARED_DATA / "eval" / "debian-reference.txt"

# A held-out text of another kind than the prose the calibration reads: Python source code, the standard
# library's argparse, dataclasses and enum modules of the Python that runs us (3.11 here: about 70 k tokens).
CODE_MODULES = ("argparse", "dataclasses", "enum")


def code_text() -> str:
    import importlib
    return "\n".join(Path(importlib.import_module(name).__file__).read_text(encoding="utf-8") for name in CODE_MODULES)
