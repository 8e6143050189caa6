"""Generalisation on context modification (gen.py): the training data, the min-norm interpolator, a
second training on the test pair, and the search for a token modification that flips its label."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from tasks.sensitivity.ops.maps import DTYPE, FeatureMap, child_seed, gaussian
from tasks.sensitivity.ops.search import projected_descent

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
