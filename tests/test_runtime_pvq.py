"""PVQ in the C runtime: its row-range products against the codec's scalar reference on random PVQ tensors,
the online Hadamard transform (optimized = reference bit for bit; both against float64 numpy), SmolLM2
converted to PVQ 3.25 bits run by pvqrun against the converter's own torch model (perplexity, greedy
continuations), and hostile PVQ files."""
from __future__ import annotations

import re

import numpy as np
import pytest

from runtime_clib import RUNTIME, cpu_isas, kernel_set, lib_with

# The structs of the codec header, for cffi: taken from the header itself so they cannot drift.
def _codec_cdef() -> str:
    text = (RUNTIME / "src" / "kernels" / "pvq_codec.h").read_text()
    defines = dict(re.findall(r"#define\s+(PVQ_\w+)\s+(\w+)", text))
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    text = text[:text.index("static inline")]
    text = "\n".join(l for l in text.splitlines() if not l.startswith("#"))
    text = text.replace("static inline", "")
    for k, v in defines.items():
        text = re.sub(rf"\b{k}\b", v, text)
    return re.sub(r"\[(\d+) << (\d+)\]", lambda m: f"[{int(m[1]) << int(m[2])}]", text)


CDEF = _codec_cdef() + """
typedef struct { pvq_codec codec; pvq_kernels k[3]; } pvq_layout;
typedef struct { const pvq_layout *layout; const uint16_t *scales; uint8_t *repacked; size_t repacked_row_bytes;
                 int f32_activations; } pvq_weight;
size_t pvq_xq_bytes(int64_t n);
void pvq_quantize_x(const float *x, int64_t n, void *xq);
size_t pvq_tile_bytes(int64_t n);
void pvq_matvec_rows(const pvq_weight *pw, const uint8_t *data, size_t row_bytes, int64_t n, int64_t r0, int64_t r1,
                     const float *x, const void *xq, float *y);
void pvq_matmul_rows(const pvq_weight *pw, const uint8_t *data, size_t row_bytes, int64_t n, int64_t r0, int64_t r1,
                     const float *x, const void *xq, size_t xq_stride, int T, float *out, int64_t out_stride,
                     void *tile);
typedef struct { int n, h, p; float scale; int8_t *base; } hadamard_plan;
int hadamard_plan_init(hadamard_plan *pl, int64_t n, int64_t p, const int8_t *base, uint64_t n_base, float scale,
                       char *err, size_t err_len);
void hadamard_plan_free(hadamard_plan *pl);
void hadamard_ref(const hadamard_plan *pl, float *x);
void hadamard_avx2(const hadamard_plan *pl, float *x);
void hadamard_apply(const hadamard_plan *pl, float *x);
const char *type_simd_name(void);
"""
def kernels():
    return lib_with(CDEF)


def _f(ffi, a: np.ndarray, ctype: str = "float *"):
    return ffi.cast(ctype, ffi.from_buffer(a))


class RandomPVQ:
    """A random PVQ tensor (uniform shape indices and gain codes, random fp16 row scales) with its layout
    loaded by the runtime's codec and kernels."""

    def __init__(self, D: int, K: int, b: int, rows: int, n: int, seed: int):
        ffi, L = self.ffi, self.L = kernels()
        rng = np.random.default_rng(seed)
        self.type_id = 0x50000000 | D << 20 | b << 16 | K
        self.layout = ffi.new("pvq_layout *")
        self.levels = np.sort(rng.uniform(0.05, 1.0, 1 << b)).astype(np.float32)
        err = ffi.new("char[256]")
        assert L.pvq_codec_init(ffi.addressof(self.layout, "codec"), self.type_id, _f(ffi, self.levels),
                                len(self.levels), err, 256) == 0, ffi.string(err)
        for isa in range(3):
            L.pvq_select_kernels(ffi.addressof(self.layout, "codec"), isa, ffi.addressof(self.layout.k, isa))
        c = self.layout.codec
        self.n, self.rows, self.row_bytes = n, rows, L.pvq_row_bytes(ffi.addressof(self.layout, "codec"), n)
        import torch
        from pvq_convert.pvq import rank_to_index
        W, G = c.field_bits, n // D
        data = bytearray()
        for _ in range(rows):
            v = 0
            index = rank_to_index(torch.from_numpy(rng.integers(0, c.n_points, G, dtype=np.int64)), D, K).tolist()
            for g in range(G):
                field = index[g] << b | int(rng.integers(0, 1 << b))
                v |= field << (g * W)
            data += v.to_bytes(self.row_bytes, "little")
        self.data = np.frombuffer(bytes(data), np.uint8).copy()
        self.scales = (rng.uniform(0.5, 2.0, rows) * rng.choice([-1, 1], rows)).astype(np.float16)
        self.weight = ffi.new("pvq_weight *", {"layout": self.layout, "scales": _f(ffi, self.scales, "uint16_t *")})

    def __del__(self):
        self.L.pvq_codec_free(self.ffi.addressof(self.layout, "codec"))

    @property
    def kernels(self):
        """The kernels of the active kernel set."""
        return self.layout.k[self.L.isa_active()]

    @property
    def kernel_name(self) -> str:
        return self.ffi.string(self.kernels.name).decode()

    def dequantize_ref(self) -> np.ndarray:
        ffi, L = self.ffi, self.L
        out = np.empty((self.rows, self.n), np.float32)
        for r in range(self.rows):
            L.pvq_dequantize_row_ref(ffi.addressof(self.layout, "codec"), _f(ffi, self.data[r * self.row_bytes:], "uint8_t *"),
                                     float(self.scales[r]), self.n, _f(ffi, out[r]))
        return out

    def quantize(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each row of x as the integer kernels read it: (xq [T, pvq_xq_bytes] bytes, step scales [T, steps])."""
        ffi, L = self.ffi, self.L
        x = np.ascontiguousarray(np.atleast_2d(x))
        xq = np.zeros((x.shape[0], L.pvq_xq_bytes(self.n)), np.uint8)
        for t in range(x.shape[0]):
            L.pvq_quantize_x(_f(ffi, x[t]), self.n, _f(ffi, xq[t], "void *"))
        steps = (self.n + 127) // 128
        return xq, np.ascontiguousarray(xq[:, steps * 128:]).view(np.float32)

    def repack(self, kind: str) -> np.ndarray:
        """The rows in the repacked layout, by the reference (pvq_repack_row) or the AVX2 decoder."""
        ffi, L = self.ffi, self.L
        fn = L.pvq_repack_row if kind == "ref" else getattr(L, f"pvq_repack_row_{kind}")
        packed = np.empty((self.rows, L.pvq_repacked_row_bytes(self.n)), np.uint8)
        for r in range(self.rows):
            fn(ffi.addressof(self.layout, "codec"), _f(ffi, self.data[r * self.row_bytes:], "uint8_t *"),
               float(self.scales[r]), self.n, _f(ffi, packed[r], "uint8_t *"))
        return packed

    def matvec(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(runtime decode product, the codec's scalar int8 reference on the same activations, xq scales)."""
        ffi, L = self.ffi, self.L
        xq, xs = self.quantize(x)
        xq, xs = xq[0], xs[0]
        y = np.full(self.rows, np.nan, np.float32)
        # two ranges, as two threads split the rows
        half = self.rows // 2
        for r0, r1 in ((0, half), (half, self.rows)):
            L.pvq_matvec_rows(self.weight, _f(ffi, self.data, "uint8_t *"), self.row_bytes, self.n, r0, r1,
                              _f(ffi, x), _f(ffi, xq, "void *"), _f(ffi, y))
        ref = np.empty(self.rows, np.float32)
        if self.kernels.matvec_q8 == ffi.NULL:  # no integer path (D != 8)
            return y, None, xs
        # the repacked layout: the same integer products without decoding
        self.repacked = {}
        packed = self.repack("ref")
        for kind in KINDS:
            fn = getattr(L, f"pvq_dot_repacked_{kind}")
            self.repacked[kind] = np.array([fn(_f(ffi, packed[r], "uint8_t *"), self.n, _f(ffi, xq, "int8_t *"),
                                               _f(ffi, xs)) for r in range(self.rows)], np.float32)
        L.pvq_matvec_q8_ref(ffi.addressof(self.layout, "codec"), _f(ffi, self.data, "uint8_t *"),
                            _f(ffi, self.scales, "uint16_t *"), self.rows, self.n, _f(ffi, xq, "int8_t *"),
                            _f(ffi, xs), _f(ffi, ref))
        return y, ref, xs

    def matmul(self, x: np.ndarray, repacked: np.ndarray | None = None) -> np.ndarray:
        """The runtime's batch product out[T, rows] (rows decoded once per tile, or read from `repacked`, the
        weight's rows repacked at load), split over two row ranges as two threads would."""
        ffi, L = self.ffi, self.L
        T = x.shape[0]
        x = np.ascontiguousarray(x)
        xq, _ = self.quantize(x)
        out = np.full((T, self.rows), np.nan, np.float32)
        tile = np.empty(L.pvq_tile_bytes(self.n), np.uint8)
        w = ffi.new("pvq_weight *", {"layout": self.layout, "scales": _f(ffi, self.scales, "uint16_t *")})
        if repacked is not None:
            w.repacked, w.repacked_row_bytes = _f(ffi, repacked, "uint8_t *"), repacked.shape[1]
        third = self.rows // 3
        for r0, r1 in ((0, third), (third, self.rows)):
            L.pvq_matmul_rows(w, _f(ffi, self.data, "uint8_t *"), self.row_bytes, self.n, r0, r1, _f(ffi, x),
                              _f(ffi, xq, "void *"), xq.shape[1], T, _f(ffi, out), self.rows,
                              _f(ffi, tile, "void *"))
        return out


KINDS = ("ref", "avx2") if "avx2" in cpu_isas() else ("ref",)  # the repacked layout's kernels


@pytest.fixture(params=cpu_isas())
def isa(request):
    """Each kernel set this CPU runs, made active in the kernels' library for the test."""
    with kernel_set(request.param, internal=True):
        yield request.param


# (D, K, b): the 2.25 / 3.25 / 4.25 / 4.5 presets (D = 8: integer kernels), and D = 16 (reference only)
LAYOUTS = [(8, 6, 3), (8, 14, 3), (8, 29, 4), (8, 32, 5), (16, 10, 4)]
SHAPES = [(64, 576), (48, 1536), (20, 96), (33, 4096)]


@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda l: "D%d-K%d-b%d" % l)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "%dx%d" % s)
def test_decode_product_against_reference(layout, shape, isa):
    """Decode (int8 activations): equal to the codec's scalar int8 reference up to float summation order, and
    within the error that rounding x to int8 can cause of the exact product."""
    D, K, b = layout
    rows, n = shape
    if kernels()[1].pvq_type_row_bytes(0x50000000 | D << 20 | b << 16 | K, n) == 0:
        pytest.skip("row length not a whole number of the layout's blocks")
    t = RandomPVQ(D, K, b, rows, n, seed=rows * n + K)
    rng = np.random.default_rng(n)
    x = (rng.standard_normal(n) * np.exp(rng.normal(0, 1, n))).astype(np.float32)  # uneven magnitudes
    W = t.dequantize_ref().astype(np.float64)
    exact = W @ x.astype(np.float64)
    y, ref, xs = t.matvec(x)
    assert np.isfinite(y).all()
    absterms = np.abs(W) @ np.abs(x.astype(np.float64))
    if t.kernels.matvec_q8 != t.ffi.NULL:
        # the same integer products and the reference's float order (pvq_codec.h): the same bits, decoded or
        # repacked, on every kernel set
        for got in (y, *t.repacked.values()):
            np.testing.assert_array_equal(got.view(np.uint32), ref.view(np.uint32))
        # each x_i moves by at most half its block's step xs / 2 when rounded to int8
        step = np.repeat(xs, 128)[:n].astype(np.float64)
        bound = np.abs(W) @ (step / 2) + 1e-5 * absterms
        np.testing.assert_array_less(np.abs(y - exact), bound)
        # and the typical error is far below that bound (random rounding errors cancel)
        assert np.sqrt(np.mean((y - exact) ** 2)) < 0.2 * np.sqrt(np.mean(bound ** 2))
    else:
        np.testing.assert_array_less(np.abs(y - exact), 1e-5 * absterms + 1e-30)


@pytest.mark.parametrize("layout", LAYOUTS[1:], ids=lambda l: "D%d-K%d-b%d" % l)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "%dx%d" % s)
def test_batch_product_against_reference(layout, shape, isa):
    """Prefill (a tile of rows decoded once, every token against it). Fast layouts: the decode product's int8
    activations, integer dots and float order, so equal bit for bit to the scalar reference and to the
    one-token product on every kernel set (a token gets the same logits in a prompt or alone), and within the
    bound of x's int8 rounding of the exact product. Others: f32 activations against the exact weights."""
    rows, n = shape
    D, K, b = layout
    if kernels()[1].pvq_type_row_bytes(0x50000000 | D << 20 | b << 16 | K, n) == 0:
        pytest.skip("row length not a whole number of the layout's blocks")
    t = RandomPVQ(*layout, rows, n, seed=rows + n)
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((6, n)) * np.exp(rng.normal(0, 1, n))).astype(np.float32)  # 4 + 2 past a tile
    W = t.dequantize_ref().astype(np.float64)
    exact = x.astype(np.float64) @ W.T
    absterms = np.abs(x.astype(np.float64)) @ np.abs(W).T
    out = t.matmul(x)
    assert np.isfinite(out).all()
    if t.kernels.tile_repacked == t.ffi.NULL:
        np.testing.assert_array_less(np.abs(out - exact), 1e-5 * absterms + 1e-30)
        return
    xq, xs = t.quantize(x)
    packed = t.repack("ref")
    ffi, L = t.ffi, t.L
    ref = np.array([[L.pvq_dot_repacked_ref(_f(ffi, packed[r], "uint8_t *"), n, _f(ffi, xq[u], "int8_t *"),
                                            _f(ffi, xs[u])) for r in range(rows)] for u in range(len(x))])
    np.testing.assert_array_equal(out.view(np.uint32), ref.astype(np.float32).view(np.uint32))
    np.testing.assert_array_equal(t.matmul(x, repacked=packed).view(np.uint32), out.view(np.uint32))
    one = np.array([t.matvec(row)[0] for row in x])
    np.testing.assert_array_equal(out.view(np.uint32), one.view(np.uint32))
    step = np.repeat(xs, 128, axis=1)[:, :n].astype(np.float64)
    np.testing.assert_array_less(np.abs(out - exact), (step / 2) @ np.abs(W).T + 1e-5 * absterms)


@pytest.mark.parametrize("layout", LAYOUTS[:3], ids=lambda l: "D%d-K%d-b%d" % l)
@pytest.mark.parametrize("shape", [(4, 576), (6, 1536), (2, 96), (4, 4096)], ids=lambda s: "%dx%d" % s)
@pytest.mark.skipif("avx2" not in open("/proc/cpuinfo").read(), reason="no AVX2")
def test_repacked_tile_kernels_against_reference(layout, shape):
    """The AVX2 repacking is the reference's bytes; the AVX2 2 x 4 tile (and the AVX-512 VNNI one, where the CPU
    runs it) equals the scalar reference dot of each (row, token) pair bit for bit (the same integer dots of
    int8 points and int8 activations, the same float order), and pvq_dot_repacked_avx2."""
    rows, n = shape
    t = RandomPVQ(*layout, rows, n, seed=7 * n + rows)
    ffi, L = t.ffi, t.L
    packed = t.repack("ref")
    np.testing.assert_array_equal(t.repack("avx2"), packed)
    rng = np.random.default_rng(n)
    x = (rng.standard_normal((4, n)) * np.exp(rng.normal(0, 1, n))).astype(np.float32)
    xq, xs = t.quantize(x)
    W = t.dequantize_ref().astype(np.float64)
    absterms = np.abs(x.astype(np.float64)) @ np.abs(W).T
    for r in range(0, rows, 2):
        got = {}
        for kind in ("ref", "avx2") + (("avx512",) if "avx512" in cpu_isas() else ()):
            out = np.full((4, 2), np.nan, np.float32)
            getattr(L, f"pvq_tile_repacked_{kind}")(
                _f(ffi, packed[r], "uint8_t *"), packed.shape[1], n, _f(ffi, xq, "int8_t *"),
                ffi.cast("float *", _f(ffi, xq, "uint8_t *") + (n + 127) // 128 * 128), xq.shape[1], _f(ffi, out), 2)
            got[kind] = out
        for kind in got:
            np.testing.assert_array_equal(got[kind].view(np.uint32), got["ref"].view(np.uint32), kind)
        dots = np.array([[L.pvq_dot_repacked_avx2(_f(ffi, packed[r + i], "uint8_t *"), n, _f(ffi, xq[u], "int8_t *"),
                                                  _f(ffi, xs[u])) for i in range(2)] for u in range(4)], np.float32)
        np.testing.assert_array_equal(got["avx2"].view(np.uint32), dots.view(np.uint32))


@pytest.mark.parametrize("n", [576, 1536, 96, 200, 4096])
@pytest.mark.skipif("avx2" not in open("/proc/cpuinfo").read(), reason="no AVX2")
def test_activation_quantizer_avx2_is_the_reference(n):
    """The AVX2 quantizer of the integer kernels' activations writes the reference's bytes: the same int8
    values (ties to even included) in the same planes, the same step scales, a zero-padded last step."""
    ffi, L = kernels()
    rng = np.random.default_rng(n)
    x = (rng.standard_normal(n) * np.exp(rng.normal(0, 1, n))).astype(np.float32)
    x[0], x[1:128] = 127.0, (np.arange(-63, 64) + 0.5)[:min(n, 128) - 1]  # scale 1: ties to round
    steps = (n + 127) // 128
    got = {}
    for kind in ("q8", "q8_avx2"):
        xq = np.full(steps * 128, 99, np.int8)
        xs = np.full(steps, np.nan, np.float32)
        getattr(L, f"pvq_quantize_x_{kind}")(_f(ffi, x), n, _f(ffi, xq, "int8_t *"), _f(ffi, xs))
        got[kind] = xq, xs
    np.testing.assert_array_equal(got["q8_avx2"][0], got["q8"][0])
    np.testing.assert_array_equal(got["q8_avx2"][1].view(np.uint32), got["q8"][1].view(np.uint32))
    pad = np.arange(n, steps * 128)  # value i goes to byte 128 s + 64 h + 4 g + j of i = 128 s + 8 g + 4 h + j
    assert (got["q8"][0][pad // 128 * 128 + pad % 8 // 4 * 64 + pad % 128 // 8 * 4 + pad % 4] == 0).all()


def test_kernel_choice_is_reported(isa):
    """The fast layouts take the active kernel set's integer kernels, and the description says which set."""
    ffi, L = kernels()
    t = RandomPVQ(8, 14, 3, 4, 64, seed=0)
    assert t.kernel_name == isa
    assert ffi.string(L.type_simd_name()).decode().startswith(isa)
    assert RandomPVQ(16, 10, 4, 4, 128, seed=0).kernel_name == "ref"


def test_kernel_set_choice():
    """The best set by default; every set the CPU lacks, and an unknown name, is a clear error that leaves the
    active set as it was. The sets' CPU checks agree with /proc/cpuinfo."""
    ffi, L = kernels()
    flags = set(re.search(r"^flags\s*:(.*)$", open("/proc/cpuinfo").read(), re.M).group(1).split())
    want = ["scalar"] + (["avx2"] if {"avx2", "fma", "f16c"} <= flags else [])
    if "avx2" in want and {"avx512f", "avx512bw", "avx512vl", "avx512vbmi", "avx512_vnni"} <= flags:
        want.append("avx512")
    assert cpu_isas() == want
    assert ffi.string(L.isa_name(L.isa_best())).decode() == want[-1]
    err = ffi.new("char[256]")
    for name in ("avx512", "avx2", "sse9"):
        if name in want:
            continue
        before = L.isa_active()
        assert L.isa_select(name.encode(), err, 256) == -1 and L.isa_active() == before
        msg = ffi.string(err).decode()
        assert ("needs instructions this CPU lacks" in msg and ", ".join(want) in msg) if name != "sse9" else \
            "unknown kernel set 'sse9'" in msg, msg


# ---------------------------------------------------------------- online Hadamard

HADAMARD_DIMS = [576, 1536, 896, 4864, 4096, 14336, 11008, 1000, 96, 24, 6]


def _plan(n):
    from pvq_convert.hadamard import plan
    ffi, L = kernels()
    pl = plan(n)
    base = np.ascontiguousarray(pl.base.reshape(-1), dtype=np.int8)
    c = ffi.new("hadamard_plan *")
    err = ffi.new("char[256]")
    rc = L.hadamard_plan_init(c, n, pl.p, _f(ffi, base, "int8_t *"), base.size, pl.scale, err, 256)
    assert rc == 0, ffi.string(err)
    return c, pl


@pytest.mark.parametrize("n", HADAMARD_DIMS)
def test_hadamard_matches_numpy_and_reference(n):
    from pvq_convert.hadamard import hadamard_matrix
    ffi, L = kernels()
    c, pl = _plan(n)
    try:
        x = np.random.default_rng(n).standard_normal((3, n)).astype(np.float32)
        x[2] *= np.exp(np.random.default_rng(0).normal(0, 2, n)).astype(np.float32)  # outlier-heavy row
        want = (hadamard_matrix(n).astype(np.float64) @ x.astype(np.float64).T).T * pl.scale
        for kind in ("ref", "avx2", "apply"):
            y = x.copy()
            for row in y:
                getattr(L, f"hadamard_{kind}")(c, _f(ffi, row))
            if kind == "ref":
                ref = y
                # float32 rounding (2^-24 relative) in each of log2(p) butterfly levels, h-term sums and the
                # scale, on values of the size of the (orthonormal) output's rms = the input's; 8x margin
                rms = np.sqrt(np.mean(x.astype(np.float64) ** 2, axis=1, keepdims=True))
                tol = 8 * 2.0 ** -24 * (np.log2(pl.p) + pl.h + 1) * rms
                assert (np.abs(y - want) < tol).all()
            else:
                assert np.array_equal(y.view(np.uint32), ref.view(np.uint32)), kind
    finally:
        L.hadamard_plan_free(c)


@pytest.mark.parametrize("bad, message", [
    (dict(p=96), "does not give the FFN width"),
    (dict(base_len=143), "not a square"),
    (dict(entry=2), "not -1, 0 or 1"),
    (dict(flip=True), "not orthogonal"),
    (dict(scale=0.5), "is not 1/sqrt"),
])
def test_hadamard_plan_rejects_bad_metadata(bad, message):
    from pvq_convert.hadamard import plan
    ffi, L = kernels()
    pl = plan(1536)
    base = pl.base.reshape(-1).astype(np.int8).copy()
    if "entry" in bad:
        base[5] = bad["entry"]
    if bad.get("flip"):
        base[13] = -base[13]
    base = base[:bad.get("base_len", base.size)]
    c = ffi.new("hadamard_plan *")
    err = ffi.new("char[256]")
    rc = L.hadamard_plan_init(c, 1536, bad.get("p", pl.p), _f(ffi, base, "int8_t *"), base.size,
                              bad.get("scale", pl.scale), err, 256)
    assert rc == -1 and message in ffi.string(err).decode()


# ---------------------------------------------------------------- SmolLM2 at PVQ 3.25 bits

N_CTX = 256
# perplexity: 10 x 512 tokens (2550 scored); on 3 x 256 (381 scored) the int8 activations' effect on the tuned
# file was +1.07% by chance, against -0.08% on these chunks
PPL_CTX, PPL_CHUNKS = 512, 10
PROMPTS = ["The capital of France is", "def fibonacci(n):", "Once upon a time, in a small village,"]
N_GREEDY = 16


@pytest.fixture(scope="module")
def pvq_smollm2(smollm2):
    """SmolLM2 converted by `python -m pvq_convert --bits 3.25` (Hessian-aware, calibrated on the eval text's
    first half), cached by the converter's inputs."""
    from models.smollm2 import pvq_gguf
    return pvq_gguf(3.25)


@pytest.fixture(scope="module")
def pvq_pair(pvq_smollm2, smollm2):
    """(runtime model through libpvq, torch model of the same file)."""
    from runtime_clib import Model
    rt = Model(pvq_smollm2, n_ctx=N_CTX, n_threads=2)
    from pvq_convert.gguf_in import file_model
    yield rt, file_model(pvq_smollm2, smollm2.hf_dir)
    rt.close()


def test_pvq_file_is_what_the_runtime_loads(pvq_smollm2):
    """The converted file is PVQ with the online Hadamard, and the runtime says so."""
    from runtime_clib import run_pvqrun
    r = run_pvqrun(["-m", pvq_smollm2, "-p", "Hi", "-n", "1", "-v", "-t", "2"])
    assert r.returncode == 0, r.stderr.decode()
    assert b"weights pvq" in r.stderr and b"int8 activations" in r.stderr and b"ffn Hadamard 12 x 128" in r.stderr
    r = run_pvqrun(["-m", pvq_smollm2, "-p", "Hi", "-n", "1", "-v", "-t", "2", "--pvq-f32-act"])
    assert r.returncode == 0 and b"f32 activations" in r.stderr, r.stderr.decode()
    r = run_pvqrun(["-m", pvq_smollm2, "-p", "Hi", "-n", "1", "--pvq-f32-act", "--pvq-repack"])
    assert r.returncode == 1 and b"pvq_repack and pvq_f32_activations exclude each other" in r.stderr, r.stderr.decode()


def test_perplexity_matches_converter_fake_quant(pvq_smollm2, pvq_pair, eval_text, tmp_path):
    """`pvqrun --perplexity` within 0.5% of pvq_convert.eval's score of the same file's weights in torch."""
    import re

    import torch

    from pvq_convert.eval import Tokenizer, chunks, score, split_text
    from runtime_clib import run_pvqrun
    rt, tm = pvq_pair
    text = split_text(eval_text)[1]
    (tmp_path / "eval.txt").write_text(text, encoding="utf-8")
    r = run_pvqrun(["-m", pvq_smollm2, "-f", tmp_path / "eval.txt", "--perplexity", "-c", PPL_CTX, "--chunks", PPL_CHUNKS,
                    "-t", "2"], timeout=600)
    assert r.returncode == 0, r.stderr.decode()
    ppl_rt = float(re.search(rb"perplexity: ([0-9.]+) over %d chunks" % PPL_CHUNKS, r.stdout).group(1))
    # the same tokens: the runtime's tokenizer, llama-perplexity's chunking as pvq_convert.eval does it
    with_bos = rt.tokenize(text, add_special=True)
    plain = rt.tokenize(text, add_special=False)
    tok = Tokenizer(None, len(with_bos) > len(plain), with_bos[0] if len(with_bos) > len(plain) else None)
    with torch.no_grad():
        s = score(lambda ids: tm(ids), chunks(with_bos, PPL_CTX, PPL_CHUNKS, tok))
    print(f"perplexity over {PPL_CHUNKS} x {PPL_CTX} tokens: pvqrun {ppl_rt:.4f}, converter's torch model {s.ppl:.4f} "
          f"({100 * (ppl_rt / s.ppl - 1):+.3f}%)")
    assert abs(ppl_rt / s.ppl - 1) < 0.005, (ppl_rt, s.ppl)


@pytest.fixture(scope="module")
def torch_greedy(pvq_pair):
    """The torch model's greedy continuations of PROMPTS (token ids from the runtime's tokenizer)."""
    import torch
    rt, tm = pvq_pair
    out = {}
    with torch.no_grad():
        for prompt in PROMPTS:
            ids, cont = rt.tokenize(prompt), []
            for _ in range(N_GREEDY):
                cont.append(int(tm(ids + cont)[-1].argmax()))
            out[prompt] = cont
    return out


def _assert_near_tie(rt, tm, ids, shared, mine, theirs, prompt):
    """Where the continuations part (after the prompt ids and the shared tokens), the two tokens must be the
    torch model's top two and its margin between them smaller than the largest difference of the two
    sides' logits on that row: a tie that int8 activations may break either way, not a wrong token.
    Returns the torch margin."""
    import torch
    rt.reset()
    row = rt.eval(ids)[-1]
    for t in shared:  # the same path as greedy: the prompt as a batch, then one token at a time
        row = rt.eval([t])[-1]
    with torch.no_grad():
        ref = tm(ids + shared)[-1].float().numpy()
    top2 = set(np.argsort(ref)[-2:].tolist())
    margin, spread = ref[theirs] - ref[mine], float(np.abs(row - ref).max())
    assert {mine, theirs} <= top2 and margin < spread, \
        f"{prompt!r}: parts at token {len(shared)}, torch margin {margin:.3f} > logit spread {spread:.3f}"
    print(f"{prompt!r}: parts at token {len(shared)}, a near-tie (torch margin {margin:.3f}, logit spread "
          f"{spread:.3f})")
    return margin


# The largest torch logit margin at which float32-activation greedy paths may part (float rounding only).
F32_TIE = 0.005


@pytest.fixture(params=cpu_isas())
def runtime_isa(request):
    """Each kernel set this CPU runs, made libpvq's for the test."""
    with kernel_set(request.param):
        yield request.param


@pytest.mark.parametrize("mode", ["native", "repacked", "f32"])
def test_greedy_matches_converter_torch_model(pvq_pair, pvq_smollm2, torch_greedy, mode, runtime_isa):
    """Greedy continuations (the prompt as a batch, then one token at a time) against the torch model's.

    With float32 activations (`--pvq-f32-act`) the runtime does the torch model's arithmetic up to float
    rounding and the fp16 KV cache, so all N_GREEDY tokens of every prompt must agree.  With int8
    activations (the default, from the PVQ fields or from the repacked rows) a logit moves by up to a few
    tenths, so the continuations may part, but only at a near-tie. On every kernel set: the int8 products
    are the same bits on each, the float32 ones and the rest of the forward pass differ by rounding."""
    from runtime_clib import Model
    rt = pvq_pair[0] if mode == "native" else \
        Model(pvq_smollm2, n_ctx=N_CTX, n_threads=2, pvq_repack=mode == "repacked", pvq_f32_act=mode == "f32")
    try:
        for prompt in PROMPTS:
            ids, theirs = rt.tokenize(prompt), torch_greedy[prompt]
            mine = rt.greedy(ids, N_GREEDY)
            first = next((i for i in range(N_GREEDY) if mine[i] != theirs[i]), None)
            if first is not None:
                margin = _assert_near_tie(rt, pvq_pair[1], ids, theirs[:first], mine[first], theirs[first], prompt)
                # float32 activations are the torch model's arithmetic up to rounding: only an exact-looking tie
                # (seen: torch margin 0.001 on an AVX-512 machine, where torch sums in other orders) may part them
                assert mode != "f32" or margin < F32_TIE, \
                    f"{prompt!r}: float32 activations part from the torch model at token {first} (margin {margin:.4f})"
    finally:
        if mode != "native":
            rt.close()


# ---------------------------------------------------------------- hostile PVQ files

def _tiny_pvq(tmp_path, mutate: str | None = None):
    """A 2-layer random llama whose linear layers are PVQ 3.25 (rotated by nothing), with one defect."""
    import gguf
    import torch

    from pvq_convert.gguf_out import copy_fields
    from pvq_convert.pvq import quantize_matrix
    from pvq_convert.pvq_format import VERSION, VERSION_KEY, pvq_entries
    from runtime_clib import tiny_gguf
    src = tiny_gguf(tmp_path / "tiny-f16.gguf")
    reader = gguf.GGUFReader(src)
    out = tmp_path / f"tiny-pvq-{mutate}.gguf"
    w = gguf.GGUFWriter(str(out), "llama")
    copy_fields(reader, w, skip={"general.architecture"})
    w.add_uint32(VERSION_KEY, 1 if mutate == "version_1" else VERSION)
    for t in reader.tensors:
        data = np.array(t.data)
        if not (t.name.startswith("blk.") and data.ndim == 2):
            w.add_tensor(t.name, data, raw_dtype=t.tensor_type)
            continue
        entries, keys = pvq_entries(t.name, quantize_matrix(torch.from_numpy(data.astype(np.float32)), 8, 14, 3))
        (pname, rows, ptype), (sname, scales, _) = entries
        (lname, levels), = keys.items()
        target = t.name == "blk.1.ffn_down.weight"
        if target and mutate == "bad_index":
            rows = rows.copy()
            rows[3, :4] = 0xFF  # group 0 of row 3: shape index 2^23 - 1, past the last class of P(8, 14)
        if target and mutate == "bad_levels":
            levels = levels[::-1]
        if target and mutate == "nan_scale":
            scales = scales.copy()
            scales[5] = np.float16(np.inf)
        w.add_tensor(pname, rows, raw_dtype=ptype)
        if not (target and mutate == "no_scales"):
            w.add_tensor(sname, scales)
        if not (target and mutate == "no_levels"):
            w.add_array(lname, levels)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out


def test_tiny_pvq_model_runs(tmp_path):
    from runtime_clib import run_pvqrun
    r = run_pvqrun(["-m", _tiny_pvq(tmp_path), "-p", "the", "-n", "4", "-t", "2"], variant="build-asan")
    assert r.returncode == 0, r.stderr.decode()


@pytest.mark.parametrize("mutate, message", [
    ("version_1", b"blk.0.attn_q.weight is PVQ of pvq.version 1, an enumeration this runtime no longer reads: "
                  b"convert the model again"),
    ("no_scales", b"has no row scales (tensor blk.1.ffn_down.weight.pvq_scale)"),
    ("no_levels", b"has no gain levels (metadata pvq.gain_levels.blk.1.ffn_down.weight)"),
    ("bad_levels", b"is not finite, non-negative and increasing"),
    ("bad_index", b"blk.1.ffn_down.weight: PVQ tensor: row 3 group 0: shape index 8388607 is no point of P(8,14)"),
    ("nan_scale", b"blk.1.ffn_down.weight: PVQ tensor: row 5 has a non-finite scale"),
])
def test_hostile_pvq_tensor_is_a_clear_error(tmp_path, mutate, message):
    from runtime_clib import run_pvqrun
    r = run_pvqrun(["-m", _tiny_pvq(tmp_path, mutate), "-p", "the", "-n", "4"], variant="build-asan")
    assert r.returncode == 1, (r.returncode, r.stderr.decode())
    assert message in r.stderr, r.stderr.decode()
