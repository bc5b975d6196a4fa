"""The `pvqrun` command of an installed package: runs the binary shipped beside libpvq.so."""
from __future__ import annotations

import os
import sys


def main() -> None:
    from ._lib import runtime_file  # noqa: the lookup only, before the library is loaded
    exe = runtime_file("pvqrun", "build/pvqrun")
    if not exe.is_file():
        sys.exit(f"pvqrun: the runtime binary is missing at {exe} (reinstall pvq, or build it with `make runtime`)")
    os.execv(str(exe), [str(exe), *sys.argv[1:]])
