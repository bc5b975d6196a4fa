"""Every SIMD kernel of the runtime against its scalar reference on random rows, the conversions against
numpy and gguf-py (bit-exact layouts), and the 2x4 tiles against the single-row kernels they batch."""
from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q
from gguf.quants import dequantize, quantize

from runtime_clib import cpu_isas, isa_index, lib_with

TYPES = {"f32": 0, "f16": 1, "q8_0": 8, "bf16": 30}
CDEF = """
void lane_sums_f16_ref(int64_t n, int lanes, int64_t n_pos, const float *w, const uint16_t *v, size_t v_stride,
                       float *out);
void exp_row_ref(int64_t n, float *y, const float *x);
void swiglu_ref(int64_t n, float *y, const float *gate, const float *up);
"""
ISAS = cpu_isas()  # every kernel set this CPU runs; [scalar] is the reference of the others


def kernels():
    return lib_with(CDEF)


def _row(ffi, tid, x: np.ndarray, isa: str = "scalar"):
    """x (float32) in the type's layout, via the runtime's own from_float of a kernel set."""
    tt = kernels()[1].type_get(tid)
    buf = ffi.new("uint8_t[]", kernels()[1].type_row_bytes(tid, x.size))
    tt.from_float[isa_index(isa)](ffi.cast("float *", ffi.from_buffer(x)), buf, x.size)
    return buf


@pytest.mark.parametrize("isa", ISAS)
def test_fp16_and_bf16_conversions_are_exact(isa):
    ffi, L = kernels()
    halves = np.arange(65536, dtype=np.uint16)
    out = np.empty(65536, np.float32)
    L.type_get(1).to_float[isa_index(isa)](ffi.from_buffer(halves), ffi.cast("float *", ffi.from_buffer(out)), 65536)
    ref = halves.view(np.float16).astype(np.float32)
    assert np.array_equal(np.isnan(out), np.isnan(ref)) and np.array_equal(out[~np.isnan(ref)], ref[~np.isnan(ref)])
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.standard_normal(10000) * 10.0 ** rng.integers(-9, 5, 10000),
                        [65504, 65519.99, 65520, 1e-8, 2.98e-8, -0.0, np.inf, -np.inf]]).astype(np.float32)
    got = np.frombuffer(ffi.buffer(_row(ffi, 1, x, isa)), np.uint16)
    with np.errstate(over="ignore"):
        assert np.array_equal(got, x.astype(np.float16).view(np.uint16))
    bf = np.frombuffer(ffi.buffer(_row(ffi, 30, x[:-2], isa)), np.uint16)
    # bf16 round to nearest even, computed independently in integer arithmetic
    u = x[:-2].view(np.uint32).astype(np.uint64)
    assert np.array_equal(bf, ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16))


def test_q8_0_layout_matches_gguf():
    ffi, L = kernels()
    rng = np.random.default_rng(1)
    x = rng.standard_normal(32 * 256).astype(np.float32)
    packed = quantize(x.reshape(1, -1), Q.Q8_0).reshape(-1)
    out = np.empty_like(x)
    L.type_get(8).to_float[0](ffi.from_buffer(packed), ffi.cast("float *", ffi.from_buffer(out)), x.size)
    assert np.array_equal(out, dequantize(packed, Q.Q8_0).reshape(-1))
    ours = np.frombuffer(ffi.buffer(_row(ffi, 8, x)), np.uint8).reshape(-1, 34)
    theirs = packed.reshape(-1, 34)
    assert np.array_equal(ours[:, :2], theirs[:, :2])  # fp16 scales identical
    dq = ours[:, 2:].view(np.int8).astype(int) - theirs[:, 2:].view(np.int8).astype(int)
    assert np.abs(dq).max() <= 1 and (dq != 0).mean() < 1e-3  # only rounding ties may differ (127/amax vs 1/d)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("name", list(TYPES))
@pytest.mark.parametrize("n", [32, 64, 576, 1536, 4096 + 32])
def test_simd_dot_matches_reference(name, n, isa):
    """Each kernel set's conversion writes the reference's bytes, and its dots (one row, batches) equal the
    scalar reference's up to float summation order."""
    ffi, L = kernels()
    tid = TYPES[name]
    tt, i = L.type_get(tid), isa_index(isa)
    rng = np.random.default_rng(n + tid)
    out = ffi.new("float[3]")
    for _ in range(20):
        w = _row(ffi, tid, rng.standard_normal(n).astype(np.float32))
        xf = (rng.standard_normal(n) * 3).astype(np.float32)
        x = _row(ffi, tt.vec_type, xf)
        assert bytes(ffi.buffer(_row(ffi, tt.vec_type, xf, isa))) == bytes(ffi.buffer(x))
        tt.dot[0](n, w, x, out)
        tt.dot[i](n, w, x, out + 1)
        tt.dot_batch[i](n, w, x, out + 2)
        scale = np.sqrt(n) * 3
        assert abs(out[1] - out[0]) <= 1e-5 * scale and abs(out[2] - out[0]) <= 1e-5 * scale, (out[0], out[1], out[2])


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("name", ["f16", "q8_0"])
def test_tiles_equal_single_rows(name, isa):
    ffi, L = kernels()
    tid = TYPES[name]
    tt, i = L.type_get(tid), isa_index(isa)
    if tt.tile[i] == ffi.NULL:
        pytest.skip(f"no tile kernel in the {isa} set")
    n, rng = 576, np.random.default_rng(7)
    rb = L.type_row_bytes(tid, n)
    w = ffi.new("uint8_t[]", 2 * rb)
    x = ffi.new("uint8_t[]", 4 * rb)
    for r in range(2):
        ffi.memmove(w + r * rb, _row(ffi, tid, rng.standard_normal(n).astype(np.float32)), rb)
    for t in range(4):
        ffi.memmove(x + t * rb, _row(ffi, tt.vec_type, rng.standard_normal(n).astype(np.float32)), rb)
    out = ffi.new("float[8]")
    tt.tile[i](n, w, rb, x, rb, out, 2)
    one = ffi.new("float *")
    for r in range(2):
        for t in range(4):
            tt.dot_batch[i](n, w + r * rb, x + t * rb, one)
            assert out[t * 2 + r] == one[0]


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("n", [576, 1536, 37])
def test_f32_tile_equals_single_rows(isa, n):
    """The f32 tile of PVQ batches (rows decoded to floats) gives each pair the set's f32 batch dot."""
    ffi, L = kernels()
    i, rng = isa_index(isa), np.random.default_rng(n)
    w, x = rng.standard_normal((2, n)).astype(np.float32), rng.standard_normal((4, n)).astype(np.float32)
    out = np.empty(8, np.float32)
    L.isa_kernels_of(i).tile_f32(n, _fp(ffi, w), 4 * n, _fp(ffi, x), 4 * n, _fp(ffi, out), 2)
    one = ffi.new("float *")
    exact = x.astype(np.float64) @ w.T.astype(np.float64)
    for r in range(2):
        for t in range(4):
            assert abs(out[t * 2 + r] - exact[t, r]) <= 1e-5 * np.abs(x[t]) @ np.abs(w[r])
            if n % 8 == 0:
                L.type_get(0).dot_batch[i](n, _fp(ffi, w[r]), _fp(ffi, x[t]), one)
                assert out[t * 2 + r] == one[0]


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("n, lanes, n_pos", [(64, 8, 300), (64, 32, 5), (67, 8, 41), (128, 8, 9), (24, 16, 100)])
def test_lane_sums_f16_matches_reference(n, lanes, n_pos, isa):
    """Attention's weighted sum of V in lanes: the vector kernel (a lane's sums in registers) forms the
    reference's fused multiply-adds in the same order, so the same bits; lanes without positions are 0."""
    ffi, L = kernels()
    rng = np.random.default_rng(n + lanes + n_pos)
    stride = n + 5  # rows of V inside a wider KV row, as attention reads one head's columns
    v = rng.standard_normal((n_pos, stride)).astype(np.float16)
    w = rng.uniform(0, 1, n_pos).astype(np.float16).astype(np.float32)
    out = {}
    for fn in ("lane_sums_f16_ref", "vec_lane_sums_f16"):
        o = np.full((lanes, n), np.nan, np.float32)
        kernel = L.lane_sums_f16_ref if fn == "lane_sums_f16_ref" else L.isa_kernels_of(isa_index(isa)).lane_sums_f16
        kernel(n, lanes, n_pos, ffi.cast("float *", ffi.from_buffer(w)),
                       ffi.cast("uint16_t *", ffi.from_buffer(v)), stride, ffi.cast("float *", ffi.from_buffer(o)))
        out[fn] = o
    assert np.array_equal(out["vec_lane_sums_f16"].view(np.uint32), out["lane_sums_f16_ref"].view(np.uint32))
    want = np.stack([(w[l::lanes, None].astype(np.float64) * v[l::lanes, :n]).sum(0) for l in range(lanes)])
    assert np.allclose(out["lane_sums_f16_ref"], want, rtol=1e-5, atol=1e-5 * np.sqrt(n_pos))


def _fp(ffi, a):
    return ffi.cast("float *", ffi.from_buffer(a))


@pytest.mark.parametrize("isa", ISAS)
def test_exp_matches_reference_and_libm(isa):
    """The vectorised exp (llama.cpp's algorithm) equals its scalar reference bit for bit, including the
    scaled range past |n| > 126, underflow to 0 and -inf, and stays within 2 ulp of the true exp."""
    ffi, L = kernels()
    rng = np.random.default_rng(5)
    x = np.concatenate([rng.uniform(-110, 90, 20000), rng.uniform(-20, 0, 20000),
                        [0.0, -0.0, -np.inf, 88.7, -87.0, -87.5, -103.0, -104.0, 1e-30, -1e-30]]).astype(np.float32)
    for n in (x.size - 3, x.size):
        fast, ref = np.empty(n, np.float32), np.empty(n, np.float32)
        L.isa_kernels_of(isa_index(isa)).exp(n, _fp(ffi, fast), _fp(ffi, x[:n]))
        L.exp_row_ref(n, _fp(ffi, ref), _fp(ffi, x[:n]))
        assert np.array_equal(fast.view(np.uint32), ref.view(np.uint32))
    with np.errstate(over="ignore"):
        true = np.exp(x.astype(np.float64))
    normal = (true > 1.2e-38) & (true < 3e38)  # away from subnormals and overflow
    err = np.abs(fast[normal].astype(np.float64) - true[normal])
    assert (err / np.spacing(true[normal].astype(np.float32))).max() <= 2
    assert fast[x == -np.inf].tolist() == [0.0]


@pytest.mark.parametrize("isa", ISAS)
def test_swiglu_matches_reference(isa):
    ffi, L = kernels()
    rng = np.random.default_rng(6)
    for n in (1536, 1541):
        g, u = (rng.standard_normal(n) * 4).astype(np.float32), rng.standard_normal(n).astype(np.float32)
        fast, ref = np.empty(n, np.float32), np.empty(n, np.float32)
        L.isa_kernels_of(isa_index(isa)).swiglu(n, _fp(ffi, fast), _fp(ffi, g), _fp(ffi, u))
        L.swiglu_ref(n, _fp(ffi, ref), _fp(ffi, g), _fp(ffi, u))
        assert np.array_equal(fast, ref)
        silu = g.astype(np.float64) / (1 + np.exp(-g.astype(np.float64)))
        assert np.abs(ref - silu * u).max() <= 1e-5 * np.abs(silu * u).max()


@pytest.mark.parametrize("isa", ISAS)
def test_softmax_sum_is_a_sum(isa):
    ffi, L = kernels()
    rng = np.random.default_rng(8)
    for n in (1, 7, 8, 64, 257):
        v = rng.uniform(0, 1, n).astype(np.float32)
        got = L.isa_kernels_of(isa_index(isa)).sums.softmax_sum(_fp(ffi, v), n)
        assert abs(got - v.astype(np.float64).sum()) <= 1e-6 * n
