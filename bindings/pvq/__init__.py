"""pvq: Python bindings of the pvq runtime (libpvq through cffi) with a llama-cpp-python-style `Llama`."""
from ._lib import LIB_PATH, ContextFullError, ModelLoadError, PvqError
from .llama import Llama

__all__ = ["Llama", "PvqError", "ModelLoadError", "ContextFullError", "LIB_PATH"]
__version__ = "0.1.0"
