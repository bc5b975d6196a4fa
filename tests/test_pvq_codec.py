"""The PVQ codec: counts, enumeration, encoder, gain levels, GGUF round trip through the C decoder,
and hostile payloads rejected by both readers."""
import ctypes
import itertools
import math
import struct

import gguf
import numpy as np
import pytest
import torch
from scipy import stats

from pvq_convert import pvq, pvq_format, pvq_gain, pvq_presets
from tests.pvq_clib import CodecError, Kernels

SMALL = [(1, 4), (2, 3), (3, 4), (4, 5), (5, 3), (6, 2), (7, 3), (8, 3), (8, 4), (16, 2)]


@pytest.fixture(scope="module")
def kernels():
    return Kernels()


def brute_points(D, K):
    return [p for p in itertools.product(range(-K, K + 1), repeat=D) if sum(map(abs, p)) == K]


@pytest.mark.parametrize("D,K", [(1, 5), (2, 4), (3, 4), (4, 4), (5, 3), (6, 2)])
def test_counts_match_brute_force(D, K):
    assert pvq.pyramid_count(D, K) == len(brute_points(D, K))


def test_counts_exact_beyond_64_bits():
    # N(32, 40) > 2^64: the Python table stays exact (checked against the closed form
    # N(D, K) = sum_j 2^j C(D, j) C(K-1, j-1)).
    D, K = 32, 40
    closed = sum(2 ** j * math.comb(D, j) * math.comb(K - 1, j - 1) for j in range(1, min(D, K) + 1))
    assert pvq.pyramid_count(D, K) == closed > 2 ** 64


@pytest.mark.parametrize("D,K", SMALL)
def test_enumeration_is_a_bijection(D, K):
    """Every code of the B-bit field is a point's index or not, and the points are P(D, K), each once."""
    n = pvq.pyramid_count(D, K)
    codes = torch.arange(1 << (n - 1).bit_length())
    idx = codes[pvq.valid_index(codes, D, K)]
    assert len(idx) == n and torch.equal(pvq.rank_to_index(torch.arange(n), D, K), idx)
    y = pvq.decode_index(idx, D, K)
    assert (y.abs().sum(1) == K).all()
    assert len({tuple(r) for r in y.tolist()}) == n
    assert torch.equal(pvq.encode_index(y, K), idx)
    if n <= 2000:   # the Python-int reference agrees with the vectorised one
        assert [pvq.point_of(int(i), D, K) for i in idx] == y.tolist()
        for i in set(range(len(codes))) - set(idx.tolist()):
            with pytest.raises(ValueError):
                pvq.point_of(i, D, K)
        assert sorted(map(tuple, y.tolist())) == sorted(brute_points(D, K)) if D <= 5 else True


def test_aligned_classes_keep_the_field():
    """The presets' top-level classes, aligned for a one-lookup split, still fit the B-bit index of a dense
    enumeration (the rate is unchanged); 3.75 (K = 22) has no room and stays dense."""
    for K, align in [(6, 8), (10, 13), (14, 16), (22, 0), (29, 23), (32, 24)]:
        B = (pvq.pyramid_count(8, K) - 1).bit_length()
        bases = pvq.class_bases(8, K)
        assert bases[-1] <= 1 << B
        assert all(b % (1 << align) == 0 for b in bases) and (align == 0 or align == B - 7)
        if align == 0:
            assert bases[-1] == pvq.pyramid_count(8, K)


@pytest.mark.parametrize("D,K", [(3, 7), (5, 4), (8, 3), (8, 6), (16, 2)])
def test_c_enumeration_matches_torch(kernels, D, K):
    c = kernels.codec(pvq_format.layout(D, K, 1).type_id, [0.5, 1.0])
    n = pvq.pyramid_count(D, K)
    codes = torch.arange(1 << (n - 1).bit_length())
    assert [c.is_point(int(i)) for i in codes] == pvq.valid_index(codes, D, K).tolist()
    idx = pvq.rank_to_index(torch.arange(n), D, K)
    y = pvq.decode_index(idx, D, K).tolist()
    assert [c.point(int(i), D) for i in idx] == y


def test_large_index_round_trip():
    # D = 16, K = 26: 47-bit indices; random points through encode/decode and the Python-int reference.
    D, K = 16, 26
    g = torch.Generator().manual_seed(1)
    idx = pvq.rank_to_index(torch.randint(0, 2 ** 62, (2000,), generator=g) % pvq.pyramid_count(D, K), D, K)
    y = pvq.decode_index(idx, D, K)
    assert torch.equal(pvq.encode_index(y, K), idx)
    for i in range(20):
        assert pvq.point_of(int(idx[i]), D, K) == y[i].tolist()
        assert pvq.index_of(y[i].tolist()) == int(idx[i])


@pytest.mark.parametrize("D,K", [(3, 5), (4, 3), (4, 6), (5, 3)])
def test_encoder_against_brute_force(D, K):
    pts = torch.tensor(brute_points(D, K), dtype=torch.float32)
    unit = pts / pts.norm(dim=1, keepdim=True)
    g = torch.Generator().manual_seed(D * 100 + K)
    w = torch.randn(2000, D, generator=g)
    wn = w / w.norm(dim=1, keepdim=True)
    best = (wn @ unit.T).max(1).values
    y = pvq.nearest_point(w, K).to(torch.float32)
    assert (y.abs().sum(1) == K).all()
    got = (wn * y / y.norm(dim=1, keepdim=True)).sum(1)
    assert (got <= best + 1e-6).all()
    assert (got >= best - 1e-6).float().mean() > 0.95       # greedy finds the nearest point almost always
    assert (best - got).max() < 0.05
    # Weighted objective (diagonal H): the greedy maximises (w^T H y)^2 / y^T H y.
    h = torch.rand(2000, D, generator=g) * 4 + 0.1
    obj_all = ((w * h) @ pts.T) ** 2 / ((pts ** 2) @ h.T).T
    yw = pvq.nearest_point(w, K, h).to(torch.float32)
    obj = ((w * h * yw).sum(1)) ** 2 / (h * yw ** 2).sum(1)
    bestw = obj_all.max(1).values
    assert (obj <= bestw * (1 + 1e-5)).all()
    assert (obj >= bestw * (1 - 1e-5)).float().mean() > 0.9
    # A full quadratic form that is diagonal gives the same points as the diagonal hook.
    yq = pvq.nearest_point(w, K, torch.diag_embed(h))
    assert torch.equal(yq, yw.to(torch.int64))


def test_gain_levels_are_lloyd_max_for_the_beta_law():
    n, D, b = 576, 8, 4
    lv = pvq_gain.gain_levels(n, D, b).double().numpy()
    assert lv.shape == (16,) and (np.diff(lv) > 0).all()
    rho = np.sqrt(stats.beta(D / 2, (n - D) / 2).rvs(size=400_000, random_state=3))
    cell = np.searchsorted((lv[1:] + lv[:-1]) / 2, rho)
    centroids = np.array([rho[cell == j].mean() for j in range(16)])
    assert np.allclose(centroids, lv, rtol=2e-3)             # each level is its cell's centroid
    # and they beat the plain quantile levels in mean squared error
    q = np.sqrt(stats.beta(D / 2, (n - D) / 2).ppf((np.arange(16) + 0.5) / 16))
    mse = lambda L: np.mean((rho - L[np.abs(rho[:, None] - L[None]).argmin(1)]) ** 2)
    assert mse(lv) < mse(q)


def write_pvq_gguf(path, tensors):
    w = gguf.GGUFWriter(str(path), "llama")
    for name, q in tensors.items():
        pvq_format.add_pvq_tensor(w, name, q)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def random_matrix(rows, n, seed):
    return torch.randn(rows, n, generator=torch.Generator().manual_seed(seed)) * 0.02


@pytest.mark.parametrize("bits", sorted(pvq_presets.PRESETS))
def test_gguf_round_trip_c_decode_bit_identical(tmp_path, kernels, bits):
    lay = pvq_presets.preset(bits)
    tensors = {f"blk.0.t{n}.weight": pvq.quantize_matrix(random_matrix(48, n, n), lay.D, lay.K, lay.gain_bits)
               for n in (576, 1536)}
    path = tmp_path / "pvq.gguf"
    write_pvq_gguf(path, tensors)
    reader = gguf.GGUFReader(str(path))                          # the plain gguf reader opens it
    by_name = {t.name: t for t in reader.tensors}
    for name, q in tensors.items():
        t = by_name[name]
        assert int(t.tensor_type) == lay.type_id
        assert list(t.shape) == [q.index.shape[1] * lay.D, q.index.shape[0]]
        assert t.n_bytes == q.index.shape[0] * lay.row_bytes(q.index.shape[1] * lay.D)
    read = pvq_format.read_pvq_tensors(path)
    for name, q in tensors.items():
        pt = read[name]
        ref = pvq.dequantize_matrix(q).numpy()
        assert np.array_equal(pvq.dequantize_matrix(pt.quantized()).numpy(), ref)
        c = kernels.codec(pt.layout.type_id, pt.levels)
        c.validate(pt.rows, pt.n, pt.scale)
        for kind in ["ref"] + kernels.kinds:
            out = c.dequantize(pt.rows, pt.scale, pt.n, kind)
            assert np.array_equal(out.view(np.uint32), ref.view(np.uint32)), kind


def test_large_k_decodes_alike_in_c_and_python(kernels):
    """Once K > 4096, q = ||y||^2 exceeds 2^24 and (float)q rounds: both decoders take the square root of the
    exact integer (docs/format.md). D = 2, K = 6000: the points (a, K - a) whose root differs between the two
    rules, each with every sign, decode bit-identically in the C reference and the Python decoder."""
    D, K, b = 2, 6000, 3
    lay = pvq_format.layout(D, K, b)
    a = np.arange(K + 1, dtype=np.int64)
    q = a * a + (K - a) ** 2
    differs = a[np.sqrt(q.astype(np.float64)).astype(np.float32) != np.sqrt(q.astype(np.float32))]
    assert len(differs) >= 32
    a = np.resize(differs, 16 * 32)
    y = np.stack([a, K - a], 1) * np.resize([[1, 1], [1, -1], [-1, 1], [-1, -1]], (len(a), 2))
    R, G = 16, 32
    rng = np.random.default_rng(0)
    qz = pvq.Quantized(pvq.encode_index(torch.from_numpy(y), K).reshape(R, G),
                       torch.from_numpy(rng.integers(0, 1 << b, (R, G))), torch.rand(R).half() + 0.5, D, K,
                       torch.from_numpy(np.sort(rng.random(1 << b)).astype(np.float32)))
    rows = pvq_format.pack_rows(qz.index, qz.code, lay)
    ref = pvq.dequantize_matrix(qz).numpy()
    out = kernels.codec(lay.type_id, qz.levels.numpy()).dequantize(rows, qz.scale.numpy().astype(np.float16), G * D,
                                                                   "ref")
    assert np.array_equal(out.view(np.uint32), ref.view(np.uint32))


def test_rate_matches_the_bytes():
    for bits in pvq_presets.PRESETS:
        lay = pvq_presets.preset(bits)
        for n in (576, 4096):
            assert lay.bits_per_weight(n) == (lay.row_bytes(n) * 8 + 16) / n
            assert abs(lay.bits_per_weight(n) - bits) < 16 / n + 1e-9


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: the CUDA torch path needs a GPU")
def test_cuda_encode_decode_matches_c(tmp_path, kernels):
    lay = pvq_presets.preset(3.25)
    W = random_matrix(64, 576, 7)
    q = pvq.quantize_matrix(W.cuda(), lay.D, lay.K, lay.gain_bits)
    ref = pvq.dequantize_matrix(q).cpu().numpy()
    idx = pvq.decode_index(q.index.reshape(-1), lay.D, lay.K)
    assert torch.equal(pvq.encode_index(idx, lay.K), q.index.reshape(-1))
    q_cpu = pvq.Quantized(q.index.cpu(), q.code.cpu(), q.scale.cpu(), q.D, q.K, q.levels.cpu())
    path = tmp_path / "cuda.gguf"
    write_pvq_gguf(path, {"w": q_cpu})
    pt = pvq_format.read_pvq_tensors(path)["w"]
    out = kernels.codec(lay.type_id, pt.levels).dequantize(pt.rows, pt.scale, 576)
    assert np.array_equal(out.view(np.uint32), ref.view(np.uint32))


# ---------------------------------------------------------------- hostile payloads

@pytest.fixture
def small_file(tmp_path):
    lay = pvq_presets.preset(3.25)
    q = pvq.quantize_matrix(random_matrix(8, 576, 11), lay.D, lay.K, lay.gain_bits)
    path = tmp_path / "small.gguf"
    write_pvq_gguf(path, {"w": q})
    return path, lay, q


def patch(path, offset, data):
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def test_version_1_file_refused(tmp_path):
    """A file of the previous enumeration is refused with the way out, not decoded as version 2."""
    q = pvq.quantize_matrix(random_matrix(8, 576, 12), 8, 14, 3)
    path = tmp_path / "v1.gguf"
    w = gguf.GGUFWriter(str(path), "pvqtest")
    w.add_uint32(pvq_format.VERSION_KEY, 1)
    pvq_format.add_pvq_tensor(w, "w", q)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ValueError, match="pvq.version is 1, this reader reads 2: .*convert the model again"):
        pvq_format.read_pvq_tensors(path)


def test_index_out_of_range_rejected(small_file, kernels):
    path, lay, q = small_file
    t = gguf.GGUFReader(str(path)).tensors[0]
    # Set row 3, group 5's field to all ones: index 2^23 - 1, past the last class of P(8, 14).
    rows = np.array(t.data)
    W = lay.field_bits
    bits = np.unpackbits(rows[3], bitorder="little")
    bits[5 * W:(5 + 1) * W] = 1
    rows[3] = np.packbits(bits, bitorder="little")
    patch(path, t.data_offset, rows.tobytes())
    with pytest.raises(ValueError, match="row 3 group 5: shape index"):
        pvq_format.read_pvq_tensors(path)
    pt = pvq_format.read_pvq_tensors(path, check=False)["w"]
    c = kernels.codec(lay.type_id, pt.levels)
    with pytest.raises(CodecError, match="row 3 group 5: shape index"):
        c.validate(pt.rows, 576, pt.scale)


def test_absurd_layouts_rejected(small_file, kernels):
    path, lay, q = small_file
    raw = path.read_bytes()
    at = raw.index(struct.pack("<I", lay.type_id))
    for D, K, b, why in [(0, 14, 3, "D=0"), (100, 14, 3, "D=100"), (8, 0, 3, "K=0"), (8, 14, 0, "gain bits 0"),
                         (8, 14, 9, "gain bits 9"), (64, 60000, 8, "exceeds")]:
        bad = pvq_format.TYPE_BASE | D << 20 | b << 16 | K
        patch(path, at, struct.pack("<I", bad))
        with pytest.raises(ValueError, match=why):
            pvq_format.read_pvq_tensors(path)
        with pytest.raises(CodecError, match=why):
            kernels.codec(bad, np.arange(1, (1 << min(b, 8)) + 1))


def test_gain_codes_and_levels(kernels):
    lay = pvq_presets.preset(3.25)
    # Every b-bit code names a level: 2^b levels are required, finite and increasing.
    for levels, why in [([0.1] * 7, "gain levels"), ([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 0.7], "increasing"),
                        ([0.1, 0.2, 0.3, np.nan, 0.5, 0.6, 0.7, 0.8], "increasing")]:
        with pytest.raises(CodecError, match=why):
            kernels.codec(lay.type_id, levels)


def test_row_size_and_scale_mismatch(small_file, kernels, tmp_path):
    path, lay, q = small_file
    pt = pvq_format.read_pvq_tensors(path)["w"]
    c = kernels.codec(lay.type_id, pt.levels)
    with pytest.raises(CodecError, match="expected 8 rows"):
        _validate_bytes(c, pt.rows.tobytes()[:-1], 576, 8)
    with pytest.raises(CodecError, match="not a multiple"):
        _validate_bytes(c, pt.rows.tobytes(), 572, 8)
    sc = pt.scale.copy()
    sc[2] = np.inf
    with pytest.raises(CodecError, match="row 2 has a non-finite scale"):
        c.validate(pt.rows, 576, sc)
    pt.scale = sc
    with pytest.raises(ValueError, match="non-finite row scale"):
        pvq_format.validate(pt)
    # A GGUF whose tensor is declared with a row length that is not a whole number of blocks.
    bad = tmp_path / "badrow.gguf"
    w = gguf.GGUFWriter(str(bad), "llama")
    w.add_tensor("w", np.zeros((4, 2 * lay.type_size), dtype=np.uint8), raw_dtype=pvq_format.gguf_type(lay))
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
    raw = bad.read_bytes()
    ne0 = 2 * lay.block_size
    at = raw.index(struct.pack("<QQ", ne0, 4))                    # ne0: two whole blocks -> not whole
    patch(bad, at, struct.pack("<QQ", ne0 - 4, 4))
    with pytest.raises(ValueError, match="not a multiple"):
        pvq_format.read_pvq_tensors(bad)


def _validate_bytes(c, data, n, rows):
    buf = np.frombuffer(data, dtype=np.uint8).copy()
    err = ctypes.create_string_buffer(256)
    if c.k.lib.pvq_validate_tensor(c.buf, buf.ctypes.data, buf.nbytes, n, rows, None, err, 256):
        raise CodecError(err.value.decode())


def test_weighted_quantization_lowers_the_weighted_error():
    """The weight hook end to end: with a per-column diagonal (a Hessian diagonal) or its D x D
    blocks, quantize_matrix lowers the weighted error it is asked to minimise."""
    g = torch.Generator().manual_seed(5)
    R, n, D = 64, 256, 8
    W = torch.randn(R, n, generator=g)
    h = torch.exp(2 * torch.randn(n, generator=g))               # column importances, wide spread
    lay = pvq_presets.preset(3.25)

    def werr(q):
        return (((pvq.dequantize_matrix(q) - W) ** 2) * h).sum().item()

    plain = werr(pvq.quantize_matrix(W, D, lay.K, lay.gain_bits))
    diag = werr(pvq.quantize_matrix(W, D, lay.K, lay.gain_bits, diag=h.view(n // D, D)))
    quad = werr(pvq.quantize_matrix(W, D, lay.K, lay.gain_bits, quad=torch.diag_embed(h.view(n // D, D))))
    assert diag < 0.9 * plain
    assert quad == pytest.approx(diag, rel=1e-4)
