"""Scalar and string metadata of a GGUF file (the chat template, names). pvq.h has no metadata accessor yet,
so the key-value section is read here; tensors and arrays are skipped. The runtime has already validated the
file when this runs, but every read is still bounds-checked."""
from __future__ import annotations

import mmap
import struct

# GGUF value types: id -> struct format of a scalar (string = 8 and array = 9 are handled apart)
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9


class _Cursor:
    def __init__(self, buf):
        self.buf, self.pos = buf, 0

    def take(self, fmt: str):
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.buf):
            raise ValueError("GGUF metadata runs past the end of the file")
        (value,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += size
        return value

    def string(self) -> str:
        n = self.take("<Q")
        if self.pos + n > len(self.buf):
            raise ValueError("GGUF string runs past the end of the file")
        s = bytes(self.buf[self.pos:self.pos + n]).decode("utf-8", errors="replace")
        self.pos += n
        return s

    def skip_array(self) -> None:
        elem, count = self.take("<I"), self.take("<Q")
        if elem in _SCALARS:
            self.pos += struct.calcsize(_SCALARS[elem]) * count
        elif elem == _STRING:
            for _ in range(count):
                n = self.take("<Q")
                self.pos += n
        elif elem == _ARRAY:
            for _ in range(count):
                self.skip_array()
        else:
            raise ValueError(f"GGUF array of unknown type {elem}")
        if self.pos > len(self.buf):
            raise ValueError("GGUF array runs past the end of the file")


def read_metadata(path) -> dict:
    """{key: value} for every scalar and string key of the GGUF file at path (arrays are left out)."""
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        cur = _Cursor(buf)
        if bytes(buf[:4]) != b"GGUF":
            raise ValueError(f"{path} is not a GGUF file")
        cur.pos = 4
        version = cur.take("<I")
        if version < 2:
            raise ValueError(f"{path}: GGUF version {version} is not supported")
        cur.take("<Q")  # tensor count
        meta = {}
        for _ in range(cur.take("<Q")):
            key, kind = cur.string(), cur.take("<I")
            if kind == _STRING:
                meta[key] = cur.string()
            elif kind == _ARRAY:
                cur.skip_array()
            elif kind in _SCALARS:
                meta[key] = cur.take(_SCALARS[kind])
            else:
                raise ValueError(f"{path}: metadata key {key} has unknown type {kind}")
        return meta
