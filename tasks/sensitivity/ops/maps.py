"""Random-feature and random-attention maps with their seeded weights (float64).

A sample is X (n, d): n tokens, width d; D = n * d; flat(X) is row-major (token after token).
Feature maps (float64 throughout):
- rf:       phi = ReLU(V flat(X)),          V (k, D) iid N(0, 1/D), k = D.
- drf:      h_l = ReLU(V_l h_{l-1}), l=1..L, V_l (D, D) iid N(0, 2/D).
- raf:      phi = flat(softmax_rows(X W X^T / sqrt(d)) X),   W (d, d) iid N(0, 1/d).
- raf_relu: as raf with ReLU scores, each row divided by its sum (a row summing to 0 is divided by 1).

Memory: the first RF layer is never held as a (k, D) matrix. Its column block for token i, V[:, i*d:(i+1)*d]
(k, d), is drawn from its own seeded generator whenever it is needed, so V flat(X) is a sum over blocks and
a search that moves token i only needs block i. The same V is therefore used exactly as the dense original
would, in O(k d) memory. Deeper DRF layers are dense (D, D) and guarded by `max_weight_gb`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

DTYPE = torch.float64
MAPS = ("rf", "drf", "raf", "raf_relu")
# Defaults of the original sweeps (sensitivity.py and gen.py): learning rate and step count per map.
SENSITIVITY_LR = {"rf": 100.0, "drf": 100.0, "raf": 10.0, "raf_relu": 10.0}
GENERALISATION_LR = {"rf": 100.0, "raf": 1.0, "raf_relu": 1.0}


def default_steps(map_name: str, n: int) -> int:
    """Steps of the original search: 300 for rf/drf, 50 * n for the attention maps."""
    return 300 if map_name in ("rf", "drf") else 50 * n


def child_seed(*keys: int) -> int:
    """A 63-bit seed derived from integer keys (run seed, repetition, purpose, block ...)."""
    state = np.random.SeedSequence([int(k) for k in keys]).generate_state(2, np.uint64)
    return int(state[0] & np.uint64(2**63 - 1))


def gaussian(shape: tuple[int, ...], seed: int, device: str | torch.device = "cpu", std: float = 1.0) -> torch.Tensor:
    """iid N(0, std^2) float64 of `shape` from its own stream `seed`: numpy's generator on CPU (about twice
    as fast as torch's for float64), a torch generator on other devices (the streams differ, so a run on a
    GPU draws other numbers than on a CPU; each is reproducible)."""
    device = torch.device(device)
    if device.type == "cpu":
        return torch.from_numpy(np.random.default_rng(seed).standard_normal(shape)) * std
    gen = torch.Generator(device=device).manual_seed(seed)
    return torch.randn(shape, generator=gen, dtype=DTYPE, device=device) * std


# ---------------------------------------------------------------------------------------------------------
# Feature maps as plain functions (the definitions; the map classes below use them)


def rf_features(x_flat: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
    """ReLU(V x): x_flat (..., D), V (k, D) -> (..., k)."""
    return torch.relu(x_flat @ V.T)


def drf_features(x_flat: torch.Tensor, Vs: list[torch.Tensor]) -> torch.Tensor:
    """h_L of h_l = ReLU(V_l h_{l-1}): x_flat (..., D), each V_l (D_out, D_in) -> (..., D_out)."""
    h = x_flat
    for V in Vs:
        h = torch.relu(h @ V.T)
    return h


def attention_scores(X: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    """X W X^T / sqrt(d): X (..., n, d), W (..., d, d) -> (..., n, n). Divisor sqrt(d), d = W's width."""
    return X @ W @ X.transpose(-1, -2) / math.sqrt(W.shape[-1])


def raf_features(X: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    """flat(softmax_rows(X W X^T / sqrt d) X): X (..., n, d) -> (..., n*d)."""
    A = torch.softmax(attention_scores(X, W), dim=-1)  # (..., n, n), rows sum to 1
    return (A @ X).flatten(-2)


def raf_relu_features(X: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    """flat(R X / rowsum(R)), R = ReLU(scores); a row with sum 0 stays all-zero: X (..., n, d) -> (..., n*d)."""
    R = torch.relu(attention_scores(X, W))  # (..., n, n)
    total = R.sum(dim=-1, keepdim=True)
    R = R / torch.where(total == 0, torch.ones_like(total), total)
    return (R @ X).flatten(-2)


def replace_row(X: torch.Tensor, i: int, z: torch.Tensor) -> torch.Tensor:
    """X (R, n, d) with row i replaced by z (R, d), differentiable in z."""
    return torch.cat([X[:, :i], z[:, None], X[:, i + 1 :]], dim=1)


# ---------------------------------------------------------------------------------------------------------
# Maps with their random weights. Every map holds R independent draws (one per repetition, each from its
# own seed) and takes X (R, M, n, d) -> (R, M, k): the searches move R tokens at once (one per
# repetition), which amortises torch's per-op overhead at small sizes. Repetition r's numbers do not
# depend on R (a unit test checks this on CPU).


class FeatureMap:
    """A feature map with R draws of its weights.

    `features(X)`: (R, M, n, d) -> (R, M, k).
    `with_row(X, i)`: X (R, n, d) -> a function z (R, d) -> phi(X with row i = z) (R, k).
    """

    name: str
    R: int
    depth: int = 1

    def features(self, X: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def with_row(self, X: torch.Tensor, i: int) -> Callable[[torch.Tensor], torch.Tensor]:
        return lambda z: self.features(replace_row(X, i, z)[:, None])[:, 0]


class RandomFeatureMap(FeatureMap):
    """rf (depth 1, variance 1) and drf (depth L, variance 2): entries N(0, variance / D), k = D.

    The first layer's column block for token i is drawn from its own generator (seed, i) when needed.
    Layers 2..L are dense (R, D, D) tensors drawn at construction (guarded by `max_weight_gb`).
    """

    def __init__(self, name: str, n: int, d: int, depth: int, variance: float, seeds: list[int],
                 device: str | torch.device = "cpu", max_weight_gb: float = 16.0):
        self.name, self.n, self.d, self.depth, self.R = name, n, d, depth, len(seeds)
        self.D = self.k = n * d
        self.std = math.sqrt(variance / self.D)
        self.seeds, self.device = list(seeds), torch.device(device)
        check_memory(f"{name} with n={n}, d={d}, L={depth}, {self.R} repetition(s)",
                     self.R * dense_weight_bytes(name, n, d, depth), max_weight_gb)
        self.deep = [
            torch.stack([gaussian((self.D, self.D), child_seed(s, 1, layer), self.device, self.std)
                         for s in self.seeds])
            for layer in range(1, depth)
        ]  # each (R, D, D)

    def block(self, i: int) -> torch.Tensor:
        """First-layer columns of token i, V1[:, i*d:(i+1)*d] for each repetition: (R, k, d)."""
        return torch.stack([gaussian((self.k, self.d), child_seed(s, 0, i), self.device, self.std)
                            for s in self.seeds])

    def first_layer(self) -> torch.Tensor:
        """The dense first layer (R, k, D): for tests and small sizes only."""
        return torch.cat([self.block(i) for i in range(self.n)], dim=2)

    def preactivation(self, X: torch.Tensor) -> torch.Tensor:
        """V1 flat(X), summed block by block: X (R, M, n, d) -> (R, M, k)."""
        out = torch.zeros((*X.shape[:2], self.k), dtype=DTYPE, device=X.device)
        for i in range(self.n):
            out += X[:, :, i, :] @ self.block(i).transpose(1, 2)
        return out

    def _deep(self, h: torch.Tensor) -> torch.Tensor:  # (R, M, D) -> (R, M, D)
        for V in self.deep:
            h = torch.relu(h @ V.transpose(1, 2))
        return h

    def features(self, X: torch.Tensor) -> torch.Tensor:
        return self._deep(torch.relu(self.preactivation(X)))

    def with_row(self, X: torch.Tensor, i: int) -> Callable[[torch.Tensor], torch.Tensor]:
        rest = torch.zeros((X.shape[0], self.k), dtype=DTYPE, device=X.device)  # fixed rows' part of V1 x
        for j in range(self.n):
            if j == i:
                B = self.block(i)  # (R, k, d): the only block the search needs
            else:
                rest += (self.block(j) @ X[:, j, :, None])[..., 0]
        return lambda z: self._deep(torch.relu(rest + (B @ z[..., None])[..., 0])[:, None])[:, 0]


class RandomAttentionMap(FeatureMap):
    """raf (softmax) and raf_relu (normalised ReLU): W (R, d, d) iid N(0, 1/d)."""

    def __init__(self, name: str, d: int, seeds: list[int], device: str | torch.device = "cpu"):
        self.name, self.d, self.R = name, d, len(seeds)
        self.W = torch.stack([gaussian((d, d), child_seed(s, 2), device, 1 / math.sqrt(d)) for s in seeds])
        self.fn = raf_features if name == "raf" else raf_relu_features

    def features(self, X: torch.Tensor) -> torch.Tensor:
        return self.fn(X, self.W[:, None])


def dense_weight_bytes(map_name: str, n: int, d: int, depth: int = 1) -> int:
    """Bytes of dense weights one draw of a map holds: DRF's (L-1) deep (D, D) layers plus a (k, d) block."""
    D = n * d
    if map_name in ("rf", "drf"):
        return 8 * ((depth - 1) * D * D + D * d)
    return 8 * d * d


def check_memory(what: str, nbytes: int, max_gb: float) -> None:
    """Raise a clear error instead of thrashing when a dense allocation would exceed `max_gb` GiB."""
    if nbytes > max_gb * 2**30:
        raise MemoryError(
            f"{what} needs {nbytes / 2**30:.1f} GiB of dense float64 matrices, more than "
            f"max_weight_gb={max_gb:g}; lower n, d, L or repetitions, or raise max_weight_gb on a machine "
            f"that has the memory"
        )


def make_map(name: str, n: int, d: int, seeds: list[int], L: int = 1, device: str | torch.device = "cpu",
             max_weight_gb: float = 16.0) -> FeatureMap:
    """The map `name` (one of MAPS) with one fresh draw of weights per seed."""
    if name == "rf":
        return RandomFeatureMap("rf", n, d, 1, 1.0, seeds, device, max_weight_gb)
    if name == "drf":
        return RandomFeatureMap("drf", n, d, L, 2.0, seeds, device, max_weight_gb)
    if name in ("raf", "raf_relu"):
        return RandomAttentionMap(name, d, seeds, device)
    raise ValueError(f"map must be one of {MAPS}, got map={name!r}")
