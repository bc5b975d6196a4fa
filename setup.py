"""Builds the C runtime into the `pvq` package: `pip install .` ships libpvq.so, pvq.h and the pvqrun binary
in pvq/lib (found there by the bindings and by the `pvqrun` command), so a non-editable install needs
nothing from the source tree afterwards. Everything else is in pyproject.toml."""
import shutil
import subprocess
from pathlib import Path

from setuptools import Distribution, setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


class BuildRuntime(build_py):
    def run(self):
        super().run()
        subprocess.run(["make", "-C", str(ROOT / "runtime"), "build/libpvq.so", "build/pvqrun"], check=True)
        if self.editable_mode:  # an editable install reads runtime/build itself
            return
        lib = Path(self.build_lib) / "pvq" / "lib"
        lib.mkdir(parents=True, exist_ok=True)
        for f in ("build/libpvq.so", "build/pvqrun", "include/pvq.h"):
            shutil.copy2(ROOT / "runtime" / f, lib)


class BinaryDistribution(Distribution):
    """The wheel carries a shared library and a program for this platform."""

    def has_ext_modules(self):
        return True


setup(cmdclass={"build_py": BuildRuntime}, distclass=BinaryDistribution)
