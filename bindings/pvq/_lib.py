"""libpvq through cffi in ABI mode: the declarations come from runtime/include/pvq.h at import, the
library is dlopen'ed. No C compiler is needed to install or import the package (see docs/python.md)."""
from __future__ import annotations

import os
import re
from pathlib import Path

from cffi import FFI

# An installed package carries the runtime in pvq/lib (setup.py); an editable install or a checkout reads the
# repository's runtime/build (bindings/pvq/_lib.py -> the repository root).
_PACKAGED = Path(__file__).resolve().parent / "lib"
_ROOT = Path(__file__).resolve().parents[2]


def runtime_file(packaged: str, in_repo: str) -> Path:
    """A file of the runtime: the package's copy when it has one, else the repository's."""
    return _PACKAGED / packaged if (_PACKAGED / packaged).is_file() else _ROOT / "runtime" / in_repo


class PvqError(RuntimeError):
    """An error reported by the runtime; .status is its pvq_status code, the message is the runtime's."""

    def __init__(self, message: str, status: int = 0):
        super().__init__(message)
        self.status = status


class ModelLoadError(PvqError, ValueError):
    """The model file is missing, unreadable or malformed (a ValueError, as in llama-cpp-python)."""


class ContextFullError(PvqError, ValueError):
    """More tokens than the context holds (a ValueError, as in llama-cpp-python)."""


def _find(env: str, default: Path, what: str) -> Path:
    """The file named by the environment variable env if it is set, else default."""
    path = Path(os.environ[env]) if os.environ.get(env) else default
    if not path.is_file():
        how = f"{env} is set to it" if os.environ.get(env) else f"set {env} or build the runtime with `make runtime`"
        raise ImportError(f"pvq: {what} not found at {path} ({how})")
    return path


def _declarations(header: str) -> str:
    """pvq.h without comments, preprocessor lines, the C++ guard and the export macro: what cffi's cdef parses."""
    header = re.sub(r"/\*.*?\*/", "", header, flags=re.S)
    header = re.sub(r"\bPVQ_API\b", "", header)  # the export macro
    keep = [line for line in header.splitlines()
            if not line.lstrip().startswith("#") and 'extern "C"' not in line and line.strip() != "}"]
    return "\n".join(keep)


def _load():
    lib_path = _find("PVQ_LIB", runtime_file("libpvq.so", "build/libpvq.so"), "libpvq.so")
    header_path = _find("PVQ_HEADER", runtime_file("pvq.h", "include/pvq.h"), "pvq.h")
    ffi = FFI()
    ffi.cdef(_declarations(header_path.read_text()))
    try:
        lib = ffi.dlopen(str(lib_path))
    except OSError as e:
        raise ImportError(f"pvq: cannot load {lib_path}: {e}") from e
    return ffi, lib, lib_path


ffi, lib, LIB_PATH = _load()

ERR_LEN = 512
STATUS_NAMES = {0: "OK", 1: "IO", 2: "FORMAT", 3: "NOMEM", 4: "ARG", 5: "CONTEXT_FULL", 6: "UTF8", 7: "TOO_LONG",
                8: "DEVICE"}


def error_buffer():
    return ffi.new("char[]", ERR_LEN)


def check(status: int, err, exc=PvqError) -> None:
    """Raises exc (ContextFullError for PVQ_ERR_CONTEXT_FULL) with the runtime's message unless status is OK."""
    if status == lib.PVQ_OK:
        return
    if status == lib.PVQ_ERR_CONTEXT_FULL:
        exc = ContextFullError
    message = ffi.string(err).decode("utf-8", errors="replace") or f"pvq error {STATUS_NAMES.get(status, status)}"
    raise exc(message, status)
