"""The peer's F16 matrix products as they really run on this CPU, measured against the runtime's kernels.

llama.cpp's ggml (the peer's own libggml-base / libggml-cpu, through ctypes) multiplies random F16 rows by
activations, one token and a batch; the runtime's F16 kernels of the kernel set of the peer's instruction
set must give the same bits (its summation orders as they are, not as read in the source). The other sets'
kernels are printed for comparison: which order the peer takes on this machine."""
from __future__ import annotations

import ctypes
import os

import numpy as np
import pytest

from runtime_clib import cpu_isas, isa_index, lib_with

llama_cpp = pytest.importorskip("llama_cpp")

GGML_F32, GGML_F16 = 0, 1
PEER_ISA = "avx512" if b"AVX512 = 1" in llama_cpp.llama_print_system_info() else "avx2"


class _InitParams(ctypes.Structure):
    _fields_ = [("mem_size", ctypes.c_size_t), ("mem_buffer", ctypes.c_void_p), ("no_alloc", ctypes.c_bool)]


def _ggml():
    """(libggml-base, libggml-cpu) of the installed peer, loaded with their own symbols only (RTLD_LOCAL)."""
    lib = os.path.join(os.path.dirname(llama_cpp.__file__), "lib")
    base = ctypes.CDLL(os.path.join(lib, "libggml-base.so"))
    cpu = ctypes.CDLL(os.path.join(lib, "libggml-cpu.so"))
    P = ctypes.c_void_p
    base.ggml_init.argtypes, base.ggml_init.restype = [_InitParams], P
    base.ggml_new_tensor_2d.argtypes, base.ggml_new_tensor_2d.restype = [P, ctypes.c_int, ctypes.c_int64,
                                                                         ctypes.c_int64], P
    base.ggml_mul_mat.argtypes, base.ggml_mul_mat.restype = [P, P, P], P
    base.ggml_new_graph.argtypes, base.ggml_new_graph.restype = [P], P
    base.ggml_build_forward_expand.argtypes = [P, P]
    base.ggml_get_data.argtypes, base.ggml_get_data.restype = [P], P
    base.ggml_free.argtypes = [P]
    cpu.ggml_cpu_init()
    cpu.ggml_graph_compute_with_ctx.argtypes = [P, P, ctypes.c_int]
    return base, cpu


def peer_matmul(w16: np.ndarray, x: np.ndarray, threads: int = 1) -> np.ndarray:
    """ggml_mul_mat(w, x) as the peer's CPU backend computes it: w [rows, n] fp16, x [T, n] f32 -> [T, rows]."""
    base, cpu = _ggml()
    rows, n = w16.shape
    T = x.shape[0]
    ctx = base.ggml_init(_InitParams(64 * 2**20, None, False))
    try:
        a = base.ggml_new_tensor_2d(ctx, GGML_F16, n, rows)
        b = base.ggml_new_tensor_2d(ctx, GGML_F32, n, T)
        ctypes.memmove(base.ggml_get_data(a), np.ascontiguousarray(w16).ctypes.data, w16.nbytes)
        ctypes.memmove(base.ggml_get_data(b), np.ascontiguousarray(x, np.float32).ctypes.data, x.nbytes)
        c = base.ggml_mul_mat(ctx, a, b)
        gf = base.ggml_new_graph(ctx)
        base.ggml_build_forward_expand(gf, c)
        cpu.ggml_graph_compute_with_ctx(ctx, gf, threads)
        out = np.empty((T, rows), np.float32)
        ctypes.memmove(out.ctypes.data, base.ggml_get_data(c), out.nbytes)
        return out
    finally:
        base.ggml_free(ctx)


def ours_matmul(w16: np.ndarray, x: np.ndarray, isa: str) -> np.ndarray:
    """The runtime's F16 products of a kernel set: activations rounded to fp16 as the peer does, then the set's
    one-token dot (T = 1) or its batch dot."""
    ffi, L = lib_with("")
    tt, i = L.type_get(GGML_F16), isa_index(isa)
    rows, n = w16.shape
    x16 = np.ascontiguousarray(x.astype(np.float16))
    dot = tt.dot[i] if x.shape[0] == 1 else tt.dot_batch[i]
    out = np.empty((x.shape[0], rows), np.float32)
    res = ffi.new("float *")
    for t in range(x.shape[0]):
        for r in range(rows):
            dot(n, ffi.cast("void *", w16[r].ctypes.data), ffi.cast("void *", x16[t].ctypes.data), res)
            out[t, r] = res[0]
    return out


# the model's products: dim 576 (projections), head_dim 64 (attention's q.k), ffn 1536
@pytest.mark.parametrize("n", [576, 64, 1536])
@pytest.mark.parametrize("T", [1, 7])
def test_f16_products_are_the_peers_bits(n, T):
    rng = np.random.default_rng(n + T)
    w16 = rng.standard_normal((32, n)).astype(np.float16)
    x = (rng.standard_normal((T, n)) * 2).astype(np.float32)
    theirs = peer_matmul(w16, x)
    same = {isa: int((ours_matmul(w16, x, isa).view(np.uint32) == theirs.view(np.uint32)).sum()) for isa in cpu_isas()}
    print(f"n={n} T={T}: peer {PEER_ISA}; products equal to the peer's bit for bit per kernel set: "
          + ", ".join(f"{k} {v}/{theirs.size}" for k, v in same.items()))
    if PEER_ISA not in same:
        pytest.skip(f"the peer runs {PEER_ISA} code this runtime's CPU check does not accept")
    assert same[PEER_ISA] == theirs.size
