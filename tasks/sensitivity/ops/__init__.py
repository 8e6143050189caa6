"""Maths of the sensitivity family, one topic per module (tensors in, tensors out, float64).

Random-feature and random-attention maps, their word sensitivity, and generalisation on context change.

Bombari and Mondelli, "Towards Understanding the Word Sensitivity of Attention Layers: A Study via Random
Features", ICML 2024 (arXiv 2402.02969); original code simone-bombari/attention-sensitivity (sensitivity.py,
gen.py).

- `maps`: the feature maps rf, drf, raf, raf_relu and their seeded weights;
- `search`: word sensitivity by projected gradient ascent;
- `generalisation`: generalisation on context modification (gen.py).

Differences from the original (numbered quirks 1-5), each named where it applies: seeded streams, one per
purpose (quirk 4); the ball centred at the perturbed token by default (quirk 2; `ball_center="noisy_start"` is the
original); `token_index="max"` for the paper's sup over tokens (quirk 1; default token 0 as the code);
`optim="features"` works (quirk 3); P_o phi and the synthetic (I - u u^T) g without D x D matrices
(quirk 5); float64 throughout. The search is the original's plain projected gradient step (no
torch.optim optimiser, whose state would change the trajectories).

The names below are re-exported so that `from tasks.sensitivity import ops` reaches every function.
"""

from tasks.sensitivity.ops.generalisation import (
    Generalisation,
    RowSpace,
    generalisation,
    rescale_rows,
    second_training,
    synthetic_training_set,
)
from tasks.sensitivity.ops.maps import (
    DTYPE,
    GENERALISATION_LR,
    MAPS,
    SENSITIVITY_LR,
    FeatureMap,
    RandomAttentionMap,
    RandomFeatureMap,
    attention_scores,
    check_memory,
    child_seed,
    default_steps,
    dense_weight_bytes,
    drf_features,
    gaussian,
    make_map,
    raf_features,
    raf_relu_features,
    replace_row,
    rf_features,
)
from tasks.sensitivity.ops.search import (
    Sensitivity,
    project,
    projected_descent,
    sensitivity,
)

__all__ = [
    "DTYPE",
    "GENERALISATION_LR",
    "MAPS",
    "SENSITIVITY_LR",
    "FeatureMap",
    "Generalisation",
    "RandomAttentionMap",
    "RandomFeatureMap",
    "RowSpace",
    "Sensitivity",
    "attention_scores",
    "check_memory",
    "child_seed",
    "default_steps",
    "dense_weight_bytes",
    "drf_features",
    "gaussian",
    "generalisation",
    "make_map",
    "project",
    "projected_descent",
    "raf_features",
    "raf_relu_features",
    "replace_row",
    "rescale_rows",
    "rf_features",
    "second_training",
    "sensitivity",
    "synthetic_training_set",
]
