"""Hadamard matrices and transforms (pvq_convert.hadamard) against float64 numpy."""
import numpy as np
import pytest
import torch

from pvq_convert.hadamard import (fwht, hadamard_matrix, hadamard_transform, paley1, paley2, plan,
                                  random_hadamard, random_hadamard_left_t, random_hadamard_right, sylvester)

# model dimensions (SmolLM2, Llama, Qwen2) and small orders of each construction
DIMS = [1, 2, 64, 576, 896, 1536, 4864, 11008, 14336, 12, 20, 28, 36, 44, 52, 6, 40]


@pytest.mark.parametrize("q", [3, 7, 11, 19, 23, 27, 43, 343])
def test_paley1_is_hadamard(q):
    H = paley1(q)
    assert set(np.unique(H)) == {-1, 1}
    assert (H @ H.T == (q + 1) * np.eye(q + 1)).all()


@pytest.mark.parametrize("q", [5, 9, 13, 17, 25, 37, 49])
def test_paley2_is_hadamard(q):
    H = paley2(q)
    assert set(np.unique(H)) == {-1, 1}
    assert (H @ H.T == 2 * (q + 1) * np.eye(2 * (q + 1))).all()


def test_sylvester_entries():
    i = np.arange(32)
    parity = np.array([[bin(a & b).count("1") % 2 for b in i] for a in i])
    assert (sylvester(32) == 1 - 2 * parity).all()


@pytest.mark.parametrize("n", DIMS)
def test_plan_is_orthogonal_and_fast_equals_dense(n):
    """Dense checks up to 2048; above, B B^T = r I exactly (the Kronecker product with the orthogonal
    H_p is then orthogonal) and the fast transform against 64 rows of the dense matrix."""
    pl = plan(n)
    assert pl.h * pl.p == n and pl.p & (pl.p - 1) == 0
    if n % 4 == 0 or n <= 2:
        assert pl.construction != "identity", pl.describe()
    B = pl.base.astype(np.int64)
    r = 1 if pl.construction == "identity" else pl.h
    assert (B @ B.T == r * np.eye(pl.h)).all()
    x = np.random.default_rng(n).standard_normal((3, n))
    got = hadamard_transform(torch.from_numpy(x)).numpy()
    if n <= 2048:
        M = hadamard_matrix(n).astype(np.float64) * pl.scale
        np.testing.assert_allclose(M @ M.T, np.eye(n), atol=1e-12)
        rows = np.arange(n)
    else:
        rows = np.random.default_rng(1).choice(n, 64, replace=False)
        Hp = sylvester(pl.p)
        M = np.stack([np.kron(B[i // pl.p], Hp[i % pl.p]) for i in rows]).astype(np.float64) * pl.scale
    np.testing.assert_allclose(got[:, rows], x @ M.T, atol=1e-10)
    got_t = hadamard_transform(torch.from_numpy(x), transpose=True).numpy()
    if n <= 2048:
        np.testing.assert_allclose(got_t, x @ M, atol=1e-10)
    np.testing.assert_allclose(hadamard_transform(torch.from_numpy(got_t)).numpy(), x, atol=1e-10)


def test_fwht_matches_dense_and_rejects_non_powers():
    x = np.random.default_rng(0).standard_normal((2, 5, 256))
    np.testing.assert_allclose(fwht(torch.from_numpy(x)).numpy(), x @ sylvester(256).T, atol=1e-10)
    with pytest.raises(ValueError):
        fwht(torch.zeros(12))


def test_random_hadamard_is_orthogonal_and_seeded():
    Q = random_hadamard(576, seed=7).numpy()
    np.testing.assert_allclose(Q @ Q.T, np.eye(576), atol=1e-12)
    assert np.allclose(Q, random_hadamard(576, seed=7).numpy())
    assert not np.allclose(Q, random_hadamard(576, seed=8).numpy())
    W = np.random.default_rng(1).standard_normal((576, 40))
    np.testing.assert_allclose(random_hadamard_right(torch.from_numpy(W.T), 7).numpy(), W.T @ Q, atol=1e-10)
    np.testing.assert_allclose(random_hadamard_left_t(torch.from_numpy(W), 7).numpy(), Q.T @ W, atol=1e-10)
    # entries all of magnitude 1/sqrt(n): the rotation spreads every coordinate evenly
    np.testing.assert_allclose(np.abs(Q), 1 / np.sqrt(576), rtol=1e-12)
