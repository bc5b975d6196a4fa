"""Builds runtime/src/kernels/pvq_*.c into a shared library (cached by source hash) and wraps it with ctypes."""
from __future__ import annotations

import ctypes
import hashlib
import os
import subprocess
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
KERNELS = ROOT / "runtime" / "src" / "kernels"
SOURCES = ["isa.c", "pvq_codec.c", "pvq_ref.c", "pvq_scalar.c", "pvq_repack.c", "pvq_avx2.c", "pvq_avx512.c"]
SHIM = "#include \"pvq_codec.h\"\nsize_t pvq_test_codec_size(void) { return sizeof(pvq_codec); }\n"


def build(cache: Path | None = None) -> Path:
    srcs = [KERNELS / s for s in SOURCES if (KERNELS / s).exists()]
    h = hashlib.sha256(SHIM.encode())
    for p in srcs + [KERNELS / "pvq_codec.h", KERNELS / "isa.h"]:
        h.update(p.read_bytes())
    cache = cache or Path(os.environ.get("PVQ_CACHE", Path.home() / ".cache" / "pvq")) / "clib"
    cache.mkdir(parents=True, exist_ok=True)
    lib = cache / f"libpvqkernels-{h.hexdigest()[:16]}.so"
    if not lib.exists():
        shim = cache / "shim.c"
        shim.write_text(SHIM)
        tmp = lib.with_suffix(".tmp.so")
        subprocess.run(["cc", "-std=c11", "-O2", "-Wall", "-Wextra", "-Werror", "-shared", "-fPIC",
                        f"-I{KERNELS}", *map(str, srcs), str(shim), "-o", str(tmp), "-lm"], check=True)
        tmp.replace(lib)
    return lib


class Kernels:
    def __init__(self):
        self.lib = L = ctypes.CDLL(str(build()))
        P, I64, F = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float
        L.pvq_test_codec_size.restype = ctypes.c_size_t
        L.pvq_codec_init.argtypes = [P, ctypes.c_uint32, P, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_size_t]
        L.pvq_codec_free.argtypes = [P]
        L.pvq_row_bytes.argtypes = [P, I64]
        L.pvq_row_bytes.restype = ctypes.c_size_t
        L.pvq_validate_row.argtypes = [P, P, I64]
        L.pvq_validate_row.restype = I64
        L.pvq_validate_tensor.argtypes = [P, P, ctypes.c_size_t, I64, I64, P, ctypes.c_char_p, ctypes.c_size_t]
        L.pvq_decode_point.argtypes = [P, ctypes.c_uint64, P]
        L.pvq_index_is_point.argtypes = [P, ctypes.c_uint64]
        for name in ("pvq_dequantize_row_ref", "pvq_dequantize_row_scalar", "pvq_dequantize_row_avx2",
                     "pvq_dequantize_row_avx512"):
            if hasattr(L, name):
                getattr(L, name).argtypes = [P, P, F, I64, P]
        for name in ("pvq_dot_row_ref", "pvq_dot_row_scalar", "pvq_dot_row_avx2", "pvq_dot_row_avx512"):
            if hasattr(L, name):
                getattr(L, name).argtypes = [P, P, F, I64, P]
                getattr(L, name).restype = F
        L.pvq_codec_set_gather_halves.argtypes = [P, ctypes.c_int]
        # the kernel sets this CPU runs (kernels/isa.h: ISA_SCALAR, ISA_AVX2, ISA_AVX512)
        self.scalar = True
        self.avx2, self.avx512 = bool(L.isa_cpu_supports(1)), bool(L.isa_cpu_supports(2))
        # the optimized kernels this CPU runs, by name: the SIMD ones with each of their halves decoders
        self.kinds = ["scalar"] + [f"{isa}-{halves}" for isa in ("avx2", "avx512") if getattr(self, isa)
                                   for halves in ("closed", "gather")]

    def runs(self, kind: str) -> bool:
        return kind in ("ref", "scalar") or getattr(self, kind.split("-")[0])

    def codec(self, type_id: int, levels) -> "Codec":
        return Codec(self, type_id, levels)


class CodecError(ValueError):
    pass


class Codec:
    def __init__(self, k: Kernels, type_id: int, levels):
        self.k = k
        self.buf = ctypes.create_string_buffer(k.lib.pvq_test_codec_size())
        self.levels = np.ascontiguousarray(levels, dtype=np.float32)
        err = ctypes.create_string_buffer(256)
        if k.lib.pvq_codec_init(self.buf, type_id, self.levels.ctypes.data, len(self.levels), err, 256):
            self.buf = None
            raise CodecError(err.value.decode())

    def __del__(self):
        if getattr(self, "buf", None) is not None:
            self.k.lib.pvq_codec_free(self.buf)

    def row_bytes(self, n: int) -> int:
        return self.k.lib.pvq_row_bytes(self.buf, n)

    def point(self, index: int, D: int) -> list[int]:
        y = np.zeros(D, dtype=np.int32)
        self.k.lib.pvq_decode_point(self.buf, index, y.ctypes.data)
        return y.tolist()

    def is_point(self, index: int) -> bool:
        return bool(self.k.lib.pvq_index_is_point(self.buf, index))

    def validate(self, rows: np.ndarray, n: int, scales: np.ndarray | None) -> None:
        rows = np.ascontiguousarray(rows, dtype=np.uint8)
        sc = None if scales is None else np.ascontiguousarray(scales, dtype=np.float16)
        err = ctypes.create_string_buffer(256)
        if self.k.lib.pvq_validate_tensor(self.buf, rows.ctypes.data, rows.nbytes, n, rows.shape[0],
                                          None if sc is None else sc.ctypes.data, err, 256):
            raise CodecError(err.value.decode())

    def kernel(self, op: str, kind: str):
        """The C function pvq_<op>_<kind> (op: dequantize_row, dot_row, dot_row_q8, matvec_q8, ...); for a kind
        such as avx512-closed or avx2-gather, the avx512 or avx2 one with the codec set to that halves decoder."""
        kind, _, halves = kind.partition("-")
        if halves:
            self.k.lib.pvq_codec_set_gather_halves(self.buf, halves == "gather")
        return getattr(self.k.lib, f"pvq_{op}_{kind}")

    def dequantize(self, rows: np.ndarray, scales: np.ndarray, n: int, kind: str = "ref") -> np.ndarray:
        fn = self.kernel("dequantize_row", kind)
        rows = np.ascontiguousarray(rows, dtype=np.uint8)
        out = np.empty((rows.shape[0], n), dtype=np.float32)
        for r in range(rows.shape[0]):
            fn(self.buf, rows[r].ctypes.data, float(np.float32(scales[r])), n, out[r].ctypes.data)
        return out

    def dot(self, rows: np.ndarray, scales: np.ndarray, n: int, x: np.ndarray, kind: str = "ref") -> np.ndarray:
        fn = self.kernel("dot_row", kind)
        rows = np.ascontiguousarray(rows, dtype=np.uint8)
        x = np.ascontiguousarray(x, dtype=np.float32)
        return np.array([fn(self.buf, rows[r].ctypes.data, float(np.float32(scales[r])), n, x.ctypes.data)
                         for r in range(rows.shape[0])], dtype=np.float32)
