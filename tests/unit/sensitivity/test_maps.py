"""Feature maps and the sensitivity ratio against independent numpy computations (seeds.md A.1, A.8)."""

import math

import numpy as np
import pytest
import torch

from tasks.sensitivity import ops as C


def _sample(n, d, seed=0):
    return C.gaussian((n, d), seed)


def _np_softmax(S):
    E = np.exp(S - S.max(axis=1, keepdims=True))
    return E / E.sum(axis=1, keepdims=True)


def test_rf_matches_numpy():
    # phi = ReLU(V flat(X)) with flat row-major, V (k, D), k = D, entries N(0, 1/D)
    n, d = 4, 3
    fmap = C.make_map("rf", n, d, [11])
    X = _sample(n, d)
    V = fmap.first_layer()[0].numpy()
    assert V.shape == (n * d, n * d)
    expected = np.maximum(V @ X.numpy().reshape(-1), 0)
    got = fmap.features(X[None, None])[0, 0].numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-14)
    assert abs(V.std() * math.sqrt(n * d) - 1) < 0.2  # variance 1/D


def test_drf_matches_numpy():
    # h_l = ReLU(V_l h_{l-1}), L layers of (D, D), entries N(0, 2/D)
    n, d, L = 3, 4, 3
    fmap = C.make_map("drf", n, d, [5], L=L)
    X = _sample(n, d, 1)
    h = X.numpy().reshape(-1)
    for V in [fmap.first_layer()[0]] + [V[0] for V in fmap.deep]:
        h = np.maximum(V.numpy() @ h, 0)
    np.testing.assert_allclose(fmap.features(X[None, None])[0, 0].numpy(), h, rtol=1e-12, atol=1e-14)
    assert len(fmap.deep) == L - 1 and fmap.deep[0].shape == (1, n * d, n * d)


def test_drf_depth_one_is_rf_times_sqrt2():
    # same streams, variance 2/D instead of 1/D, ReLU positively homogeneous: exactly sqrt(2) * rf
    n, d = 5, 4
    X = _sample(n, d, 2)[None, None]
    rf = C.make_map("rf", n, d, [3]).features(X)
    drf = C.make_map("drf", n, d, [3], L=1).features(X)
    torch.testing.assert_close(drf, math.sqrt(2) * rf, rtol=1e-12, atol=1e-14)


def test_raf_matches_numpy():
    # flat(softmax_rows(X W X^T / sqrt d) X), rows of A sum to 1, row-major output
    n, d = 5, 3
    fmap = C.make_map("raf", n, d, [7])
    X = _sample(n, d, 3)
    Xn, W = X.numpy(), fmap.W[0].numpy()
    A = _np_softmax(Xn @ W @ Xn.T / math.sqrt(d))
    np.testing.assert_allclose(A.sum(axis=1), 1.0)
    np.testing.assert_allclose(fmap.features(X[None, None])[0, 0].numpy(), (A @ Xn).reshape(-1), rtol=1e-12)


def test_raf_relu_matches_numpy_and_zero_rows():
    n, d = 6, 4
    fmap = C.make_map("raf_relu", n, d, [9])
    X = _sample(n, d, 4)
    Xn, W = X.numpy(), fmap.W[0].numpy()
    R = np.maximum(Xn @ W @ Xn.T / math.sqrt(d), 0)
    s = R.sum(axis=1, keepdims=True)
    expected = (R / np.where(s == 0, 1, s)) @ Xn
    np.testing.assert_allclose(fmap.features(X[None, None])[0, 0].numpy(), expected.reshape(-1), rtol=1e-12)
    # all scores negative (positive rows, W = -I): every row sums to 0 and stays zero, no NaN
    Xp = X.abs()[None, None]
    out = C.raf_relu_features(Xp, -torch.eye(d, dtype=C.DTYPE))
    assert torch.equal(out, torch.zeros_like(out))


@pytest.mark.parametrize("name", C.MAPS)
def test_with_row_equals_features_of_replaced_sample(name):
    # the search's restricted map (RF: one block plus the fixed rows' part) is the full map
    n, d, R = 4, 3, 2
    fmap = C.make_map(name, n, d, [1, 2], L=2 if name == "drf" else 1)
    X = torch.stack([_sample(n, d, 5), _sample(n, d, 6)])
    z = torch.stack([_sample(1, d, 7)[0], _sample(1, d, 8)[0]])
    for i in (0, 2):
        Xi = X.clone()
        Xi[:, i] = z
        torch.testing.assert_close(fmap.with_row(X, i)(z), fmap.features(Xi[:, None])[:, 0], rtol=1e-10, atol=1e-12)
    assert fmap.features(X[:, None]).shape == (R, 1, n * d)


def test_rf_norm_near_half():
    # rows of norm sqrt(d): unit-variance pre-activations, so ||phi||^2 / k is near 1/2
    n, d = 20, 32
    X = C.rescale_rows(_sample(n, d, 10))
    phi = C.make_map("rf", n, d, [4]).features(X[None, None])[0, 0]
    assert abs(float(phi @ phi) / (n * d) - 0.5) < 0.08


def test_ratio_at_fixed_delta_permutation():
    # for a fixed Delta on token 0, permuting rows 1..n-1 leaves the RAF ratio unchanged (permutation-
    # equivariant map), but changes the RF ratio (RF weights depend on positions)
    n, d = 6, 4
    X = _sample(n, d, 12)
    delta = _sample(1, d, 13)[0]
    perm = torch.tensor([0, 3, 5, 1, 2, 4])

    def ratio(fmap, Xs):
        phi = fmap.features(Xs[None, None])[0, 0]
        Xd = Xs.clone()
        Xd[0] += delta
        return float(torch.linalg.vector_norm(fmap.features(Xd[None, None])[0, 0] - phi)
                     / torch.linalg.vector_norm(phi))

    raf, rf = C.make_map("raf", n, d, [14]), C.make_map("rf", n, d, [14])
    assert ratio(raf, X) == pytest.approx(ratio(raf, X[perm]), rel=1e-12)
    assert abs(ratio(rf, X) - ratio(rf, X[perm])) > 1e-3


def test_sensitivity_ratio_at_start_matches_numpy():
    # steps=0: S is the ratio at the noisy start x_0 + 0.1 * noise, with the noise of stream (seed, 3, 0)
    n, d, seed = 4, 3, 21
    fmap = C.make_map("raf", n, d, [seed])
    X = _sample(n, d, 22)
    (res,) = C.sensitivity(fmap, X[None], [seed], lr=1.0, steps=0)
    noise = np.random.default_rng(C.child_seed(seed, 3, 0)).standard_normal(d)
    Xn, W = X.numpy(), fmap.W[0].numpy()

    def phi(M):
        return (_np_softmax(M @ W @ M.T / math.sqrt(d)) @ M).reshape(-1)

    Xd = Xn.copy()
    Xd[0] += 0.1 * noise
    expected = np.linalg.norm(phi(Xd) - phi(Xn)) / np.linalg.norm(phi(Xn))
    assert res.S == pytest.approx(expected, rel=1e-10)  # noqa: SIM300 - `S` is a field, not a constant
    assert res.norm == pytest.approx(np.linalg.norm(phi(Xn)), rel=1e-12)
    (zero,) = C.sensitivity(fmap, X[None], [seed], lr=1.0, steps=0, init_noise=0.0)
    assert zero.S == 0.0 and zero.delta_norm == 0.0


def test_projection_and_descent():
    # the ball constraint holds; descending ||z - a||^2 from inside ends at a's projection on the ball
    centre = torch.zeros(2, 3, dtype=C.DTYPE)
    a = torch.tensor([[3.0, 4.0, 0.0], [0.1, 0.0, 0.0]], dtype=C.DTYPE)
    z = C.projected_descent(lambda z: ((z - a) ** 2).sum(-1), centre, centre, 2.0, 0.1, 200)
    torch.testing.assert_close(z[0], torch.tensor([1.2, 1.6, 0.0], dtype=C.DTYPE))
    torch.testing.assert_close(z[1], a[1])
    far = C.project(torch.full((1, 3), 10.0, dtype=C.DTYPE), centre[:1], 2.0)
    assert float(torch.linalg.vector_norm(far)) <= 2.0 + 1e-9


@pytest.mark.parametrize("name", ["rf", "raf"])
def test_search_respects_ball(name):
    n, d = 5, 8
    X = _sample(n, d, 30)[None]
    (x0,) = C.sensitivity(C.make_map(name, n, d, [31]), X, [31], lr=C.SENSITIVITY_LR[name], steps=40)
    assert 0 < x0.delta_norm <= 1 + 1e-9 and x0.S > 0
    (noisy,) = C.sensitivity(C.make_map(name, n, d, [31]), X, [31], lr=C.SENSITIVITY_LR[name], steps=40,
                             ball_center="noisy_start")
    assert noisy.delta_norm <= 1 + 0.1 * 3 + 1e-9  # the original's ball can exceed sqrt(d) by the noise


def test_token_index_max_is_at_least_token_zero():
    n, d = 4, 6
    X = _sample(n, d, 40)[None]
    fmap = C.make_map("raf", n, d, [41])
    (first,) = C.sensitivity(fmap, X, [41], lr=10.0, steps=30)
    (best,) = C.sensitivity(fmap, X, [41], lr=10.0, steps=30, token_index="max")
    assert best.S >= first.S and 0 <= best.token < n


def test_repetition_numbers_do_not_depend_on_batch():
    # repetition r draws from its own streams; batching R searches together changes nothing
    n, d = 6, 8
    seeds = [C.child_seed(0, r) for r in range(3)]
    X = torch.stack([C.gaussian((n, d), C.child_seed(s, 4)) for s in seeds])
    for name in ("rf", "raf"):
        alone = C.sensitivity(C.make_map(name, n, d, seeds[:1]), X[:1], seeds[:1], lr=1.0, steps=25)
        batch = C.sensitivity(C.make_map(name, n, d, seeds), X, seeds, lr=1.0, steps=25)
        assert batch[0].S == pytest.approx(alone[0].S, rel=1e-9)  # noqa: SIM300 - `S` is a field, not a constant


def test_memory_guard_refuses_huge_drf():
    # paper-scale DRF (d=768, n=80, L=8) would need ~200 GiB: refuse before allocating
    with pytest.raises(MemoryError, match=r"GiB.*max_weight_gb=16"):
        C.make_map("drf", 80, 768, [0], L=8, max_weight_gb=16)
    C.make_map("rf", 150, 768, [0], max_weight_gb=1)  # RF never holds V: one (k, d) block only
