"""Identities of the generaliser (seeds.md A.4, A.8), exact to 1e-8 in float64."""

import numpy as np
import pytest
import torch

from tasks.sensitivity import ops as C


@pytest.fixture(scope="module")
def problem():
    n, d, N = 4, 5, 9  # D = 20 > N: over-parameterised
    Xs, Y, x, y = C.synthetic_training_set(N, n, d, seed=3)
    fmap = C.make_map("raf", n, d, [4])
    feats = fmap.features(torch.cat([x[None], Xs])[None])[0]
    return feats[1:], Y, feats[0], y


def test_min_norm_interpolator(problem):
    Phi, Y, _phi, _y = problem
    theta = C.RowSpace.of(Phi).pinv_apply(Y)
    torch.testing.assert_close(Phi @ theta, Y, rtol=0, atol=1e-8)
    np.testing.assert_allclose(theta.numpy(), np.linalg.pinv(Phi.numpy()) @ Y.numpy(), atol=1e-8)


def test_orthogonal_part_without_dense_projector(problem):
    # P_o phi = phi - pinv(Phi) Phi phi equals the dense (I - pinv(Phi) Phi) phi of the original
    Phi, _Y, phi, _y = problem
    P = np.eye(Phi.shape[1]) - np.linalg.pinv(Phi.numpy()) @ Phi.numpy()
    np.testing.assert_allclose(C.RowSpace.of(Phi).orthogonal(phi).numpy(), P @ phi.numpy(), atol=1e-8)


@pytest.mark.parametrize("training", ["fine_tuning", "total"])
def test_second_training_identities(problem, training):
    Phi, Y, phi, y = problem
    rows = C.RowSpace.of(Phi)
    theta = rows.pinv_apply(Y)
    theta1 = C.second_training(theta, Phi, Y, phi, y, training)
    t0 = phi @ theta
    assert float(phi @ theta1) == pytest.approx(float(y), abs=1e-8)  # both modes fit the new pair
    if training == "total":
        p = rows.orthogonal(phi)
        closed = theta + p * (y - t0) / (p @ p)
        torch.testing.assert_close(theta1, closed, rtol=0, atol=1e-8)  # re-training's closed form
        torch.testing.assert_close(Phi @ theta1, Y, rtol=0, atol=1e-8)  # still interpolates the old data
        a_dir = p / (p @ p)
    else:
        assert float(torch.linalg.vector_norm(Phi @ theta1 - Y)) > 1e-3  # fine-tuning forgets a little
        a_dir = phi / (phi @ phi)
    # D1 - D0 = (y - t0) * a for any modified sample's features phi_D
    phi_D = C.gaussian(phi.shape, 99)
    assert float(phi_D @ theta1 - phi_D @ theta) == pytest.approx(float((y - t0) * (phi_D @ a_dir)), abs=1e-8)


def test_synthetic_problem_signs():
    Xs, Y, x, y = C.synthetic_training_set(30, 3, 4, seed=1)
    assert set(Y.tolist()) <= {-1.0, 1.0} and float(y) == 1.0
    assert Xs.shape == (30, 3, 4) and x.shape == (3, 4)


@pytest.mark.parametrize("optim", ["loss", "feat_align", "features"])
def test_generalisation_outputs(optim):
    # every objective runs (quirk 3: `features` works), t1 = y, and the search stays in the ball
    n, d, N = 3, 4, 6
    Xs, Y, x, y = C.synthetic_training_set(N, n, d, seed=5)
    g = C.generalisation(C.make_map("rf", n, d, [6]), Xs, Y, x, y, training="total", optim=optim, lr=1.0, steps=20)
    assert g.t1 == pytest.approx(g.y, abs=1e-8) and g.delta_norm <= 1 + 1e-9
    assert all(np.isfinite([g.t0, g.D0, g.D1]))
