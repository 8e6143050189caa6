"""The paper's qualitative findings on synthetic data (seeds.md A.7, claims C1-C5), with margins that a
wrong map would fail. C1-C4 use exactly the synthetic runs of sweeps/word_sensitivity_small.yaml (d=32,
4 repetitions in one batched search, seed 0, the original's lr and steps = 50 n for the attention maps),
at its smallest and largest n, through the task function: the same run ids give the same numbers."""

from pathlib import Path

import numpy as np
import pytest
import yaml

from orchestrator.context import local_context
from tasks.sensitivity import ops as C
from tasks.sensitivity.report import decay_ratios
from tasks.sensitivity.task import WordSensitivityParams, word_sensitivity

SMALL = Path(__file__).resolve().parents[3] / "sweeps" / "word_sensitivity_small.yaml"


@pytest.fixture(scope="module")
def table():
    import pandas as pd

    params = yaml.safe_load(SMALL.read_text())["stages"]["sens"]["params"]
    ns = params["n"]["grid"]
    rows = []
    for name in ("rf", "raf", "raf_relu"):
        for n in (min(ns), max(ns)):
            p = WordSensitivityParams(dataset="synthetic", map=name, d=params["d"], n=n,
                                      repetitions=params["repetitions"])
            rows += [{"map": name, "dataset": "synthetic", **r} for r in word_sensitivity(p, local_context(seed=0))]
    df = pd.DataFrame(rows)
    return {(m, n): float(s) for (m, n), s in df.groupby(["map", "n"])["S"].mean().items()}, min(ns), max(ns), df


def test_c1_rf_decays_like_inverse_sqrt_n(table):
    # S_rf ~ 1/sqrt(n): the ratio for n 5 -> 40 is near 1/sqrt(8) = 0.35
    S, short, long, _ = table
    assert 0.2 < S["rf", long] / S["rf", short] < 0.5
    scaled = [np.sqrt(n) * S["rf", n] for n in (short, long)]
    assert max(scaled) / min(scaled) < 1.6


def test_c2_raf_does_not_decay(table):
    S, short, long, _ = table
    assert S["raf", long] / S["raf", short] > 0.7
    assert S["raf", short] > 1 and S["raf", long] > 1


def test_c3_raf_over_rf_grows_with_n(table):
    S, short, long, _ = table
    assert S["raf", short] / S["rf", short] > 1.5
    assert S["raf", long] / S["rf", long] > 2 * S["raf", short] / S["rf", short]


def test_c4_relu_attention_decays_between_rf_and_raf(table):
    S, short, long, _ = table
    assert S["raf_relu", long] / S["raf_relu", short] < 0.6
    assert S["rf", long] < S["raf_relu", long] < S["raf", long]


def test_decay_ratio_table(table):
    # the report's table, which the quickstart can assert on: S(largest n) / S(smallest n) per map
    ratios = decay_ratios(table[3]).set_index("map")["ratio"]
    assert ratios["raf"] > 0.7 and ratios["rf"] < 0.5 and ratios["raf_relu"] < 0.6


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
