"""The bit budget covers the whole file: with `--bits B` the converter's file holds at most B + 0.25 bits per
parameter of the checkpoint (8 x file bytes / the checkpoint's parameters, a tied embedding counted once), and
the converter says what it wrote."""
from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pytest

from pvq_convert.pvq_presets import PRESETS

SLACK = 0.25


def checkpoint_parameters(hf_dir) -> int:
    """Counted from the safetensors headers themselves, not by the converter's code."""
    from safetensors import safe_open
    n = 0
    for f in sorted(hf_dir.glob("*.safetensors")):
        with safe_open(f, "np") as st:
            n += sum(int(np.prod(st.get_slice(k).get_shape())) for k in st.keys())
    return n


@pytest.mark.parametrize("bits", sorted(PRESETS))
def test_whole_file_within_the_budget(smollm2, bits, tmp_path):
    """Every preset, SmolLM2, the default vocabulary coding. --no-hessian only to save time: the calibration
    changes which codes are chosen, not how many bytes they take (test_runtime_pvq checks a calibrated file)."""
    out = tmp_path / "m.gguf"
    r = subprocess.run([sys.executable, "-m", "pvq_convert", str(smollm2.hf_dir), "--bits", str(bits), "--no-hessian",
                        "-q", "-o", str(out)], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr
    m = re.search(r"whole file: (\d+) bytes for the checkpoint's (\d+) parameters, ([0-9.]+) bits per parameter", r.stdout)
    assert m, r.stdout
    size, params, bpp = int(m.group(1)), int(m.group(2)), float(m.group(3))
    assert size == out.stat().st_size
    assert params == checkpoint_parameters(smollm2.hf_dir)
    assert abs(bpp - 8 * size / params) < 1e-4
    print(f"--bits {bits}: {size / 1e6:.2f} MB, {bpp:.4f} bits per parameter (budget {bits + SLACK})")
    assert bpp <= bits + SLACK
