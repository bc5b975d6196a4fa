"""The pvq package for tests, importable before `pip install -e .` maps bindings/ (see docs/python.md), with the
runtime built first."""
from __future__ import annotations

import sys
from pathlib import Path

from runtime_clib import build_dir

ROOT = Path(__file__).resolve().parents[1]


def import_pvq():
    build_dir("build")
    if str(ROOT / "bindings") not in sys.path:
        sys.path.insert(0, str(ROOT / "bindings"))
    import pvq
    return pvq
