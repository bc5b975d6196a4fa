"""Optimized PVQ kernels (table-driven scalar, AVX2, AVX-512) against the reference on random valid rows."""
import numpy as np
import pytest

from pvq_convert import pvq, pvq_format, pvq_gain, pvq_presets
from tests.pvq_clib import Kernels

# The presets, plus layouts that exercise the other kernel specializations: 32-entry tables (K >= 15),
# 5 gain bits (32 levels), 6 gain bits (gathered levels), wide fields (> 32 bits), K = 31 (gathered tables),
# fields of 10 and 6 bits (several fields per byte).
LAYOUTS = [(pvq_presets.preset(b).K, pvq_presets.preset(b).gain_bits) for b in sorted(pvq_presets.PRESETS)] + \
          [(13, 4), (20, 5), (12, 6), (31, 2), (3, 1), (1, 2)]
ROW_LENGTHS = [576, 1536, 4096, 14336, 192, 160, 224]   # steps of 16 (SmolLM2, 7B widths) and tails of 8, 4, 12


@pytest.fixture(scope="module")
def kernels():
    return Kernels()


def random_rows(lay, rows, n, rng):
    """Random valid rows: uniform points (their indices), uniform gain codes."""
    import torch
    N = pvq.pyramid_count(lay.D, lay.K)
    G = n // lay.D
    index = pvq.rank_to_index(torch.from_numpy(rng.integers(0, N, size=rows * G, dtype=np.int64)), lay.D,
                              lay.K).reshape(rows, G)
    code = torch.from_numpy(rng.integers(0, 1 << lay.gain_bits, size=(rows, G), dtype=np.int64))
    return pvq_format.pack_rows(index, code, lay), index, code


@pytest.mark.parametrize("K,b", LAYOUTS)
@pytest.mark.parametrize("kind", ["scalar", "avx2-closed", "avx2-gather", "avx512-closed", "avx512-gather"])
def test_simd_matches_reference(kernels, K, b, kind):
    if not kernels.runs(kind):
        pytest.skip(f"this CPU lacks {kind}")
    rng = np.random.default_rng(K * 10 + b)
    for n in ROW_LENGTHS:
        lay = pvq_format.layout(8, K, b)
        try:
            lay.row_bytes(n)
        except ValueError:
            continue
        rows, _, _ = random_rows(lay, 24, n, rng)
        levels = pvq_gain.gain_levels(n, 8, b).numpy()
        scales = (rng.random(24) + 0.5).astype(np.float16)
        c = kernels.codec(lay.type_id, levels)
        ref = c.dequantize(rows, scales, n, "ref")
        got = c.dequantize(rows, scales, n, kind)
        assert np.array_equal(got.view(np.uint32), ref.view(np.uint32)), (n, kind)
        x = rng.standard_normal(n).astype(np.float32)
        exact = ref.astype(np.float64) @ x.astype(np.float64)
        scale = np.abs(ref).astype(np.float64) @ np.abs(x).astype(np.float64)
        for k in ("ref", kind):
            assert np.all(np.abs(c.dot(rows, scales, n, x, k) - exact) <= 1e-5 * scale + 1e-30), (n, k)


def q8_dot(c, rows, scales, n, x, kind):
    import ctypes
    L = c.k.lib
    steps = (n + 127) // 128
    xq = np.zeros(steps * 128, dtype=np.int8)
    xs = np.zeros(steps, dtype=np.float32)
    L.pvq_quantize_x_q8.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p]
    x = np.ascontiguousarray(x, dtype=np.float32)
    L.pvq_quantize_x_q8(x.ctypes.data, n, xq.ctypes.data, xs.ctypes.data)
    fn = c.kernel("dot_row_q8", kind)
    fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_float, ctypes.c_int64, ctypes.c_void_p,
                   ctypes.c_void_p]
    fn.restype = ctypes.c_float
    rows = np.ascontiguousarray(rows)
    return np.array([fn(c.buf, rows[r].ctypes.data, float(np.float32(scales[r])), n, xq.ctypes.data,
                        xs.ctypes.data) for r in range(rows.shape[0])]), xq, xs


@pytest.mark.parametrize("K,b", LAYOUTS)
def test_q8_dot(kernels, K, b):
    rng = np.random.default_rng(K + b)
    for n in ROW_LENGTHS:
        lay = pvq_format.layout(8, K, b)
        try:
            lay.row_bytes(n)
        except ValueError:
            continue
        rows, _, _ = random_rows(lay, 16, n, rng)
        scales = (rng.random(16) + 0.5).astype(np.float16)
        c = kernels.codec(lay.type_id, pvq_gain.gain_levels(n, 8, b).numpy())
        w = c.dequantize(rows, scales, n, "ref").astype(np.float64)
        x = rng.standard_normal(n).astype(np.float32)
        ref, xq, xs = q8_dot(c, rows, scales, n, x, "ref")
        # The reference integer dot equals W times the dequantized activations.
        xd = np.zeros((n + 127) // 128 * 128)
        for s in range(len(xs)):
            for g in range(16):
                for h in range(2):
                    for j in range(4):
                        xd[128 * s + 8 * g + 4 * h + j] = xs[s] * xq[128 * s + 64 * h + 4 * g + j]
        exact = w @ xd[:n]
        mag = np.abs(w) @ np.abs(xd[:n])
        assert np.all(np.abs(ref - exact) <= 1e-5 * mag)
        # and W x up to the activation rounding (|x - xd| <= xs / 2 per element)
        assert np.all(np.abs(exact - w @ x) <= np.abs(w) @ np.repeat(xs / 2, 128)[:n] * 1.0001)
        # every kernel set follows the reference's float order (pvq_codec.h): the same bits
        for kind in kernels.kinds:
            got, _, _ = q8_dot(c, rows, scales, n, x, kind)
            assert np.array_equal(got.astype(np.float32).view(np.uint32), ref.astype(np.float32).view(np.uint32)), kind


def assert_indices_decode_alike(kernels, lay, idx, n=4096):
    """Shape indices idx (a multiple of n / 8 of them, in rows of n weights, gain code idx mod 2^b) decode
    bit-identically in the reference and in every kernel set the CPU runs."""
    rows = len(idx) * 8 // n
    code = idx % (1 << lay.gain_bits)
    packed = pvq_format.pack_rows(idx.view(rows, -1), code.view(rows, -1), lay)
    c = kernels.codec(lay.type_id, pvq_gain.gain_levels(n, 8, lay.gain_bits).numpy())
    scales = np.ones(rows, dtype=np.float16)
    ref = c.dequantize(packed, scales, n, "ref")
    for k in kernels.kinds:
        assert np.array_equal(c.dequantize(packed, scales, n, k).view(np.uint32), ref.view(np.uint32)), k


@pytest.mark.parametrize("bits", [2.25, 3.25])
def test_every_index_of_the_small_presets(kernels, bits):
    """Every shape index of the preset decodes identically in the optimized kernels (the float
    division shortcuts are exact for every remainder, not just for sampled ones)."""
    import torch
    lay = pvq_presets.preset(bits)
    N = pvq.pyramid_count(lay.D, lay.K)
    per_chunk = 128 * 4096 // 8
    for start in range(0, N, per_chunk):
        assert_indices_decode_alike(kernels, lay, pvq.rank_to_index(torch.arange(start, start + per_chunk) % N, 8, lay.K))


def test_matvec_q8_with_fp16_scales(kernels):
    """The whole-tensor entry point (rows back to back, fp16 scales as stored) equals the row dots."""
    import ctypes
    rng = np.random.default_rng(9)
    lay = pvq_presets.preset(3.25)
    n, rows = 576, 40
    packed, _, _ = random_rows(lay, rows, n, rng)
    scales = (rng.random(rows) + 0.5).astype(np.float16)
    c = kernels.codec(lay.type_id, pvq_gain.gain_levels(n, 8, lay.gain_bits).numpy())
    x = rng.standard_normal(n).astype(np.float32)
    per_row, xq, xs = q8_dot(c, packed, scales, n, x, "ref")
    L = c.k.lib
    for kind in ["ref"] + kernels.kinds:
        fn = c.kernel("matvec_q8", kind)
        fn.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_int64] * 2 + [ctypes.c_void_p] * 3
        y = np.zeros(rows, dtype=np.float32)
        data = np.ascontiguousarray(packed)
        fn(c.buf, data.ctypes.data, scales.ctypes.data, rows, n, xq.ctypes.data, xs.ctypes.data, y.ctypes.data)
        assert np.array_equal(y.view(np.uint32), per_row.astype(np.float32).view(np.uint32)), kind


@pytest.mark.parametrize("isa", ["scalar", "avx2", "avx512"])
def test_kernel_selection(kernels, isa):
    import ctypes

    class Sel(ctypes.Structure):  # every field of pvq_kernels (pvq_codec.h): the C side writes them all
        _fields_ = [("name", ctypes.c_char_p), ("dequantize", ctypes.c_void_p), ("dot", ctypes.c_void_p),
                    ("matvec_q8", ctypes.c_void_p), ("repack", ctypes.c_void_p), ("dot_repacked", ctypes.c_void_p),
                    ("tile_repacked", ctypes.c_void_p)]
    L = kernels.lib
    L.pvq_select_kernels.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.POINTER(Sel)]
    isa_id = ["scalar", "avx2", "avx512"].index(isa)
    lay = pvq_presets.preset(3.25)
    sel = Sel()
    codec = kernels.codec(lay.type_id, np.arange(1, 9))
    L.pvq_select_kernels(codec.buf, isa_id, ctypes.byref(sel))
    assert sel.name.decode() == isa and sel.matvec_q8
    assert sel.dot == ctypes.cast(getattr(L, f"pvq_dot_row_{isa}"), ctypes.c_void_p).value
    assert sel.matvec_q8 == ctypes.cast(getattr(L, f"pvq_matvec_q8_{isa}"), ctypes.c_void_p).value
    wide = pvq_format.layout(16, 26, 5)          # no fast path: the reference, no Q8 matvec
    codec = kernels.codec(wide.type_id, np.arange(1, 33))
    L.pvq_select_kernels(codec.buf, isa_id, ctypes.byref(sel))
    assert sel.name.decode() == "ref" and not sel.matvec_q8


@pytest.mark.parametrize("bits", [3.75, 4.25])
def test_every_half_of_the_large_presets(kernels, bits):
    """Too many indices to try them all, but every half is tried: for every split k1 and every index i < N(4, k)
    of a half of k pulses, one index whose first half and one whose second half it is (the SIMD kernels decode
    the halves by their closed forms, word and byte lanes, with a table-driven search)."""
    import torch
    lay = pvq_presets.preset(bits)
    K, N = lay.K, pvq.pyramid_count
    idx = []
    for k1 in range(K + 1):
        n1, n2, cum = N(4, k1), N(4, K - k1), pvq.class_bases(8, K)[k1]
        i1 = torch.arange(n1)
        idx.append(cum + i1 * n2 + i1 % n2)            # every first half, some second half
        i2 = torch.arange(n2)
        idx.append(cum + (i2 % n1) * n2 + i2)          # every second half
    idx = torch.cat(idx)
    idx = torch.cat([idx, torch.zeros((-len(idx)) % 512, dtype=idx.dtype)])   # whole rows of 4096 weights
    assert_indices_decode_alike(kernels, lay, idx)
