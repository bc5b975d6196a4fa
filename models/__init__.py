"""Scripts that fetch and prepare the models the demo, tests and benchmarks use."""
import os
from pathlib import Path

# The project's shared data (eval text, tokenizer test vectors) lies beside the checkout.
SHARED_DATA = Path(os.environ.get("PVQ_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
EVAL_TEXT = SHARED_DATA / "eval" / "debian-reference.txt"
