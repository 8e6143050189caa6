"""Word sensitivity S = ||phi(X_i(Delta)) - phi(X)|| / ||phi(X)|| for the Delta found by projected gradient
ascent on the RMS feature change over the ball ||Delta|| <= sqrt(d) (R independent searches at once).

The search is the original's plain projected gradient step (no torch.optim optimiser, whose state would
change the trajectories).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch

from tasks.sensitivity.ops.maps import FeatureMap, child_seed, gaussian

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
