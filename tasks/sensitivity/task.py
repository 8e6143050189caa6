"""Adapters: params in, rows out, for the word-sensitivity and generalisation experiments (Bombari and
Mondelli 2024). Params in `tasks.sensitivity.params`, maths in `tasks.sensitivity.ops`; no setup (the maps
are drawn per run from its seed)."""

from __future__ import annotations

from typing import Any

from orchestrator.context import RunContext
from orchestrator.registry import task
from tasks.sensitivity.params import GeneralisationParams, SensitivityCommon, WordSensitivityParams

__all__ = ["GeneralisationParams", "WordSensitivityParams", "generalisation", "word_sensitivity"]


def _samples(params: SensitivityCommon, ctx: RunContext, seeds: list[int], per_seed: int):
    """For each seed, `per_seed` distinct upstream embeddings: X (len(seeds) * per_seed, n, d) float64 with
    rows rescaled to sqrt(d) (the original's preprocessing), their indices and labels."""
    import numpy as np

    from tasks.common.artifacts import find_layer
    from tasks.sensitivity import ops

    stage = params.upstream_stage
    if stage not in ctx.upstream:
        raise LookupError(f"dataset='upstream' needs the stage '{stage}' in `needs`; this run has upstream "
                          f"stages {sorted(ctx.upstream)}")
    emb = find_layer(ctx.upstream[stage], params.layer, stage)
    pool = emb.eligible(params.n, params.rows, params.split).tolist()
    if len(pool) < per_seed:
        raise ValueError(f"{emb.path}: {len(pool)} texts have n={params.n} usable rows (rows={params.rows}, "
                         f"split={params.split}); need {per_seed}")
    chosen = [pool[j] for s in seeds
              for j in np.random.default_rng(ops.child_seed(s, 8)).choice(len(pool), per_seed, replace=False)]
    X = ops.rescale_rows(emb.read(chosen, params.n, params.d)).to(ctx.device)
    return X, chosen, [int(emb.labels[j]) for j in chosen]


@task("sensitivity.word_sensitivity", params=WordSensitivityParams, version=1, resources={"num_cpus": 1},
      smoke={"dataset": "upstream", "d": 8, "n": 4, "steps": 5, "repetitions": 2},
      smoke_upstream={"embed": ("embedding.hidden_states", {"n_train": 6, "max_tokens": 24, "max_length": 32})})
def word_sensitivity(params: WordSensitivityParams, ctx: RunContext) -> list[dict[str, Any]]:
    """Word sensitivity S of a random feature / attention map (Bombari and Mondelli 2024, sensitivity.py).

    Per repetition: fresh weights, a sample X (n, d) (synthetic N(0, 1) entries, or an upstream embedding
    with rows rescaled to sqrt(d)), and a projected gradient ascent of the RMS feature change over a
    perturbation of one token (ops.sensitivity). Rows: d, n, L, S, norm = ||phi(X)|| as the original's
    output lines, plus the perturbed token, the realised ||Delta|| / sqrt(d) and the sample drawn.
    Defaults fix the original's quirks: seeded (quirk 4), ball centred at the token (quirk 2, option
    ball_center="noisy_start"), float64 everywhere (the original's raf_relu numpy path used float32).
    Repetition r's streams derive from (ctx.seed, r) only, so grid points that share a seed share their
    random draws (common random numbers: the synthetic sample at n is the first n rows of the one at
    n' > n, and an upstream run draws the same text); the original drew independently at every point.
    """
    import torch

    from tasks.sensitivity import ops

    seeds = [ops.child_seed(ctx.seed, r) for r in range(params.repetitions)]
    if params.dataset == "synthetic":
        X = torch.stack([ops.gaussian((params.n, params.d), ops.child_seed(s, 4), ctx.device) for s in seeds])
        samples, labels = [-1] * params.repetitions, [0] * params.repetitions
    else:
        X, samples, labels = _samples(params, ctx, seeds, 1)
    fmap = ops.make_map(params.map, params.n, params.d, seeds, params.L, ctx.device, params.max_weight_gb)
    lr = params.lr if params.lr is not None else ops.SENSITIVITY_LR[params.map]
    steps = params.steps if params.steps is not None else ops.default_steps(params.map, params.n)
    found = ops.sensitivity(fmap, X, seeds, lr=lr, steps=steps, token_index=params.token_index,
                                ball_center=params.ball_center, init_noise=params.init_noise)
    return [
        {"d": params.d, "n": params.n, "L": params.L, "S": s.S, "norm": s.norm, "rep": r, "token": s.token,
         "delta_norm": s.delta_norm, "sample": samples[r], "label": labels[r], "search_lr": lr,
         "search_steps": steps}
        for r, s in enumerate(found)
    ]


@task("sensitivity.generalisation", params=GeneralisationParams, version=1, resources={"num_cpus": 1},
      smoke={"dataset": "upstream", "d": 4, "n": 3, "N": 4, "steps": 5},
      smoke_upstream={"embed": ("embedding.hidden_states", {"n_train": 6, "max_tokens": 24, "max_length": 32})})
def generalisation(params: GeneralisationParams, ctx: RunContext) -> list[dict[str, Any]]:
    """Generalisation on context modification (Bombari and Mondelli 2024, gen.py).

    Per repetition: N training samples and a test pair (x, y) (synthetic: gen.py's planted sign problem;
    upstream: N + 1 distinct embeddings with their labels), the min-norm interpolator theta, a second
    training on (x, y) (fine_tuning or total re-training), then a search for a modification of token
    `token_index` of x that the second model should label -y (objective `optim`). Rows: n, d, N, t0, t1,
    D0, D1 as the original's output lines, plus y and the realised ||Delta|| / sqrt(d). Success: D1 near -y.
    `optim="features"` uses phi / ||phi||^2 (quirk 3: the original raises NameError); P_o phi is computed
    without a D x D matrix (quirk 5).
    """
    import torch

    from tasks.sensitivity import ops

    D = params.n * params.d
    ops.check_memory(f"generalisation with N={params.N}, n={params.n}, d={params.d}",
                         4 * 8 * (params.N + 1) * D, params.max_weight_gb)  # features, SVD factors, stacked copy
    lr = params.lr if params.lr is not None else ops.GENERALISATION_LR[params.map]
    steps = params.steps if params.steps is not None else ops.default_steps(params.map, params.n)
    rows = []
    for r in range(params.repetitions):
        seed = ops.child_seed(ctx.seed, r)
        if params.dataset == "synthetic":
            Xs, Y, x, y = ops.synthetic_training_set(params.N, params.n, params.d, seed, ctx.device)
        else:
            X, _, labels = _samples(params, ctx, [seed], params.N + 1)
            Yall = torch.tensor(labels, dtype=ops.DTYPE, device=ctx.device)
            x, y, Xs, Y = X[0], Yall[0], X[1:], Yall[1:]
        fmap = ops.make_map(params.map, params.n, params.d, [ops.child_seed(seed, 9)], 1, ctx.device,
                                params.max_weight_gb)
        g = ops.generalisation(fmap, Xs, Y, x, y, training=params.training, optim=params.optim, lr=lr,
                                   steps=steps, token_index=params.token_index)
        rows.append({"n": params.n, "d": params.d, "N": params.N, "t0": g.t0, "t1": g.t1, "D0": g.D0, "D1": g.D1,
                     "y": g.y, "rep": r, "delta_norm": g.delta_norm, "search_lr": lr, "search_steps": steps})
    return rows
