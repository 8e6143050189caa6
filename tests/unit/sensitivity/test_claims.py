"""The paper's qualitative findings on synthetic data (seeds.md A.7, claims C1-C5), with margins that a
wrong map would fail. Sizes are small (d=32, n in {5, 40}, 4 repetitions batched in one search) and the
search is the original's (lr, steps = 50 n for the attention maps)."""

import math

import numpy as np
import pytest
import torch

from tasks.sensitivity import compute as C

D_WIDTH, N_SHORT, N_LONG, REPS = 32, 5, 40, 4


def _mean_S(name: str, n: int) -> float:
    seeds = [C.child_seed(2024, r) for r in range(REPS)]
    X = torch.stack([C.gaussian((n, D_WIDTH), C.child_seed(s, 4)) for s in seeds])
    found = C.sensitivity(C.make_map(name, n, D_WIDTH, seeds), X, seeds, lr=C.SENSITIVITY_LR[name],
                          steps=C.default_steps(name, n))
    return float(np.mean([f.S for f in found]))


@pytest.fixture(scope="module")
def table():
    return {(m, n): _mean_S(m, n) for m in ("rf", "raf", "raf_relu") for n in (N_SHORT, N_LONG)}


def test_c1_rf_decays_like_inverse_sqrt_n(table):
    # S_rf ~ 1/sqrt(n): the ratio for n 5 -> 40 is near 1/sqrt(8) = 0.35
    ratio = table["rf", N_LONG] / table["rf", N_SHORT]
    assert 0.2 < ratio < 0.5
    scaled = [math.sqrt(n) * table["rf", n] for n in (N_SHORT, N_LONG)]
    assert max(scaled) / min(scaled) < 1.6


def test_c2_raf_does_not_decay(table):
    assert table["raf", N_LONG] / table["raf", N_SHORT] > 0.7
    assert table["raf", N_SHORT] > 1 and table["raf", N_LONG] > 1


def test_c3_raf_over_rf_grows_with_n(table):
    short = table["raf", N_SHORT] / table["rf", N_SHORT]
    long = table["raf", N_LONG] / table["rf", N_LONG]
    assert short > 1.5 and long > 2 * short


def test_c4_relu_attention_decays_between_rf_and_raf(table):
    assert table["raf_relu", N_LONG] / table["raf_relu", N_SHORT] < 0.6
    assert table["rf", N_LONG] < table["raf_relu", N_LONG] < table["raf", N_LONG]


def _mean_D1_times_y(name: str, training: str, n: int = 20, d: int = 16, seeds=(0, 1, 2)) -> float:
    values = []
    for seed in seeds:
        Xs, Y, x, y = C.synthetic_training_set(n * d // 2, n, d, C.child_seed(seed, 1))
        fmap = C.make_map(name, n, d, [C.child_seed(seed, 2)])
        g = C.generalisation(fmap, Xs, Y, x, y, training=training, optim="loss", lr=C.GENERALISATION_LR[name],
                             steps=C.default_steps(name, n))
        assert g.t1 == pytest.approx(g.y, abs=1e-8)
        values.append(g.D1 * g.y)
    return float(np.mean(values))


@pytest.mark.parametrize("training", ["fine_tuning", "total"])
def test_c5_raf_generalises_to_modified_context_rf_does_not(training):
    # objective `loss`, synthetic, d=16, N = n d / 2: RAF's second training labels the modified sample -y,
    # RF's stays near or on the side of y
    assert _mean_D1_times_y("raf", training) < -0.8
    assert _mean_D1_times_y("rf", training) > -0.3
