"""Random-feature and random-attention maps, their word sensitivity, and generalisation on context change.

Bombari and Mondelli, "Towards Understanding the Word Sensitivity of Attention Layers: A Study via Random
Features", ICML 2024 (arXiv 2402.02969); original code simone-bombari/attention-sensitivity (sensitivity.py,
gen.py). What the original computes, step by step, is in shared/research/seeds.md section A.

A sample is X (n, d): n tokens, width d; D = n * d; flat(X) is row-major (token after token).
Feature maps (float64 throughout):
- rf:       phi = ReLU(V flat(X)),          V (k, D) iid N(0, 1/D), k = D.
- drf:      h_l = ReLU(V_l h_{l-1}), l=1..L, V_l (D, D) iid N(0, 2/D).
- raf:      phi = flat(softmax_rows(X W X^T / sqrt(d)) X),   W (d, d) iid N(0, 1/d).
- raf_relu: as raf with ReLU scores, each row divided by its sum (a row summing to 0 is divided by 1).

Word sensitivity S = ||phi(X_i(Delta)) - phi(X)|| / ||phi(X)|| for the Delta found by projected gradient
ascent on the RMS feature change over the ball ||Delta|| <= sqrt(d) (section A.3).

Memory: the first RF layer is never held as a (k, D) matrix. Its column block for token i, V[:, i*d:(i+1)*d]
(k, d), is drawn from its own seeded generator whenever it is needed, so V flat(X) is a sum over blocks and
a search that moves token i only needs block i. The same V is therefore used exactly as the dense original
would, in O(k d) memory. Deeper DRF layers are dense (D, D) and guarded by `max_weight_gb`.

Differences from the original (seeds.md A.6), each named where it applies: seeded streams, one per purpose
(quirk 4); the ball centred at the perturbed token by default (quirk 2; `ball_center="noisy_start"` is the
original); `token_index="max"` for the paper's sup over tokens (quirk 1; default token 0 as the code);
`optim="features"` works (quirk 3); P_o phi and the synthetic (I - u u^T) g without D x D matrices
(quirk 5); float64 throughout. The search is the original's plain projected gradient step (no
torch.optim optimiser, whose state would change the trajectories).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

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


# ---------------------------------------------------------------------------------------------------------
# Projected gradient search (R independent searches at once)


def project(z: torch.Tensor, centre: torch.Tensor, radius: float) -> torch.Tensor:
    """Nearest point of each ball {||z_r - centre_r|| <= radius}: z, centre (R, d)."""
    delta = z - centre
    norm = torch.linalg.vector_norm(delta, dim=-1, keepdim=True)
    return torch.where(norm > radius, centre + delta * (radius / norm), z)


def projected_descent(objective: Callable[[torch.Tensor], torch.Tensor], start: torch.Tensor,
                      centre: torch.Tensor, radius: float, lr: float, steps: int) -> torch.Tensor:
    """Plain gradient descent z <- P(z - lr * grad), P the projection on the ball (the original's manual
    update, no optimiser state). `objective` returns one value per row of z (R, d); rows are independent,
    so descending their sum is R separate searches. Stops early if a gradient is not finite.
    """
    z = start.detach().clone()
    for _ in range(steps):
        z.requires_grad_(True)
        (grad,) = torch.autograd.grad(objective(z).sum(), z)
        if not torch.isfinite(grad).all():
            break
        with torch.no_grad():
            z = project(z - lr * grad, centre, radius)
    return z.detach()


@dataclass(frozen=True)
class Sensitivity:
    S: float  # ||phi(X_D) - phi|| / ||phi||
    norm: float  # ||phi(X)||
    token: int  # the perturbed token
    delta_norm: float  # ||x_t - x_token|| / sqrt(d): the realised perturbation relative to the radius


def sensitivity(fmap: FeatureMap, X: torch.Tensor, noise_seeds: list[int], *, lr: float, steps: int,
                token_index: int | Literal["max"] = 0, ball_center: Literal["x0", "noisy_start"] = "x0",
                init_noise: float = 0.1) -> list[Sensitivity]:
    """Word sensitivity of each of fmap's R draws at its own sample X[r] (X: (R, n, d)), estimated as
    sensitivity.py does; repetition r's start noise comes from the streams (noise_seeds[r], token).

    Start at x_i + init_noise * N(0, I_d) (the noise breaks the zero gradient of the norm at Delta = 0),
    ascend the RMS feature change sqrt(mean((phi(X_t) - phi)^2)) with plain gradient steps of size `lr`,
    projecting after every step onto the ball of radius sqrt(d) centred at x_i (`ball_center="x0"`, the
    paper's constraint; default) or at the noisy start (`"noisy_start"`, the original code: the realised
    ||Delta|| can then reach 1.1 sqrt(d)). S is taken at the last iterate, as the original does.
    `token_index="max"` searches every token and keeps the largest S (the paper's sup over i; the code
    searches token 0 only).
    """
    R, n, d = X.shape
    if len(noise_seeds) != R:
        raise ValueError(f"need one noise seed per repetition: {len(noise_seeds)} seeds for R={R}")
    tokens = range(n) if token_index == "max" else [token_index]
    best: list[Sensitivity | None] = [None] * R
    for i in tokens:
        if not 0 <= i < n:
            raise ValueError(f"token_index must be in [0, {n}), got token_index={i}")
        f = fmap.with_row(X, i)  # z (R, d) -> (R, k)
        with torch.no_grad():
            phi = f(X[:, i])  # = phi(X), (R, k)
            norm = torch.linalg.vector_norm(phi, dim=-1)  # (R,)
        noise = torch.stack([gaussian((d,), child_seed(s, 3, i), X.device) for s in noise_seeds])  # (R, d)
        start = X[:, i] + init_noise * noise
        centre = X[:, i] if ball_center == "x0" else start

        def objective(z: torch.Tensor, f: Callable[[torch.Tensor], torch.Tensor] = f,
                      phi: torch.Tensor = phi) -> torch.Tensor:
            return -torch.sqrt(torch.mean((f(z) - phi) ** 2, dim=-1))

        z = projected_descent(objective, start, centre, math.sqrt(d), lr, steps)
        with torch.no_grad():
            S = torch.linalg.vector_norm(f(z) - phi, dim=-1) / norm
            moved = torch.linalg.vector_norm(z - X[:, i], dim=-1) / math.sqrt(d)
        for r in range(R):
            current = best[r]
            if current is None or float(S[r]) > current.S:
                best[r] = Sensitivity(float(S[r]), float(norm[r]), i, float(moved[r]))
    return best  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------------------------
# Data


def rescale_rows(X: torch.Tensor) -> torch.Tensor:
    """Every row to norm sqrt(d) (the original's preprocessing of embeddings): (..., n, d) -> same."""
    return X * (math.sqrt(X.shape[-1]) / torch.linalg.vector_norm(X, dim=-1, keepdim=True))


def synthetic_training_set(N: int, n: int, d: int, seed: int, device: str | torch.device = "cpu"):
    """gen.py's synthetic problem: Xs (N, n, d) iid N(0,1); u ~ N(0, I_D / D); Y = sign(flat(Xs) u);
    x = u + (I - u u^T) g with g ~ N(0, I_D), computed as u + g - u (u . g) (no D x D matrix; quirk 5);
    y = sign(<x, u>). Returns Xs, Y (N,), x (n, d), y (0-dim tensor)."""
    D = n * d
    Xs = gaussian((N, n, d), child_seed(seed, 5), device)
    u = gaussian((D,), child_seed(seed, 6), device, 1 / math.sqrt(D))
    Y = torch.sign(Xs.reshape(N, D) @ u)
    g = gaussian((D,), child_seed(seed, 7), device)
    x = u + g - u * (u @ g)
    return Xs, Y, x.reshape(n, d), torch.sign(x @ u)


# ---------------------------------------------------------------------------------------------------------
# Generalisation on context modification (gen.py)


@dataclass(frozen=True)
class RowSpace:
    """Thin SVD of a feature matrix Phi (N, D) = U diag(s) Vh: enough for pinv and projections."""

    U: torch.Tensor  # (N, r)
    s: torch.Tensor  # (r,)
    Vh: torch.Tensor  # (r, D)

    @classmethod
    def of(cls, Phi: torch.Tensor) -> RowSpace:
        U, s, Vh = torch.linalg.svd(Phi, full_matrices=False)
        keep = s > s.max() * max(Phi.shape) * torch.finfo(Phi.dtype).eps  # numpy/torch pinv cut-off
        return cls(U[:, keep], s[keep], Vh[keep])

    def pinv_apply(self, Y: torch.Tensor) -> torch.Tensor:
        """pinv(Phi) Y, the minimum-norm solution of Phi theta = Y: (N,) -> (D,)."""
        return self.Vh.T @ ((self.U.T @ Y) / self.s)

    def orthogonal(self, v: torch.Tensor) -> torch.Tensor:
        """P_o v = v - pinv(Phi) Phi v: the part of v (D,) orthogonal to the row space (quirk 5: no D x D)."""
        return v - self.Vh.T @ (self.Vh @ v)


def second_training(theta: torch.Tensor, Phi: torch.Tensor, Y: torch.Tensor, phi: torch.Tensor,
                    y: torch.Tensor, training: Literal["fine_tuning", "total"]) -> torch.Tensor:
    """theta1 after training on the new pair (phi, y), starting from the interpolator theta of (Phi, Y).

    total (re-training): pinv([Phi; phi]) [Y; y], the min-norm interpolator of the N + 1 points.
    fine_tuning: theta + phi (y - phi.theta) / ||phi||^2, the limit of gradient descent on the single-sample
    square loss started at theta. Both give phi.theta1 = y.
    """
    if training == "total":
        return RowSpace.of(torch.cat([Phi, phi[None]])).pinv_apply(torch.cat([Y, y.reshape(1)]))
    if training == "fine_tuning":
        return theta + phi * (y - phi @ theta) / (phi @ phi)
    raise ValueError(f"training must be 'fine_tuning' or 'total', got training={training!r}")


@dataclass(frozen=True)
class Generalisation:
    t0: float  # phi . theta      (the first training's output on x)
    t1: float  # phi . theta1     (= y)
    D0: float  # phi_D . theta    (first training, modified context)
    D1: float  # phi_D . theta1   (second training, modified context; success = close to -y)
    y: float
    delta_norm: float  # ||x_t - x_token|| / sqrt(d)


def generalisation(fmap: FeatureMap, Xs: torch.Tensor, Y: torch.Tensor, x: torch.Tensor, y: torch.Tensor, *,
                   training: Literal["fine_tuning", "total"], optim: Literal["loss", "feat_align", "features"],
                   lr: float, steps: int, token_index: int = 0) -> Generalisation:
    """gen.py: fit the min-norm interpolator of (Xs, Y), train again on (x, y), then search a modification
    of token `token_index` of x (start at x_i exactly, ball of radius sqrt(d) around it) whose label should
    be -y, by gradient descent on one of three squared objectives:
      loss:       (phi(X_t) . theta1 + y)^2
      feat_align: (phi(X_t) . P_o phi / ||P_o phi||^2 + 1)^2
      features:   (phi(X_t) . phi / ||phi||^2 + 1)^2   (quirk 3: the original raises NameError here)
    Xs (N, n, d), Y (N,), x (n, d), y scalar; `fmap` holds one draw (R = 1).
    """
    if fmap.R != 1:
        raise ValueError(f"generalisation takes a map with one draw of weights, got R={fmap.R}")
    _n, d = x.shape
    feats = fmap.features(torch.cat([x[None], Xs])[None])[0]  # (N + 1, k): one pass over the weights
    phi, Phi = feats[0], feats[1:]
    rows = RowSpace.of(Phi)
    theta = rows.pinv_apply(Y)
    theta1 = second_training(theta, Phi, Y, phi, y, training)
    minus_one = torch.tensor(-1.0, dtype=DTYPE, device=x.device)
    if optim == "loss":
        direction, target = theta1, -y
    elif optim == "feat_align":
        p = rows.orthogonal(phi)
        direction, target = p / (p @ p), minus_one
    elif optim == "features":
        direction, target = phi / (phi @ phi), minus_one
    else:
        raise ValueError(f"optim must be 'loss', 'feat_align' or 'features', got optim={optim!r}")
    f = fmap.with_row(x[None], token_index)  # z (1, d) -> (1, k)
    start = x[None, token_index]
    z = projected_descent(lambda z: (f(z) @ direction - target) ** 2, start, start, math.sqrt(d), lr, steps)
    with torch.no_grad():
        phi_D = f(z)[0]
    return Generalisation(
        t0=float(phi @ theta), t1=float(phi @ theta1), D0=float(phi_D @ theta), D1=float(phi_D @ theta1),
        y=float(y), delta_norm=float(torch.linalg.vector_norm(z[0] - x[token_index])) / math.sqrt(d),
    )
