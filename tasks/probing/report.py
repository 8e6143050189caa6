"""Figures and tables of the probing family, drawn from stored rows (pandas DataFrames).

- `swap_table(df)`: rows of `probing.embedding_swap`; one line per (run, question): the answer before and
  after the edit, its probabilities, whether it changed and whether an edited token was in the input.
- `plot_update_norms(df, path)`: rows of `probing.fact_injection`; heat map per run (up to `max_runs`) of
  a per-layer norm (default the step's update norm ||W_t - W_{t-1}||) against steps, layers on the y axis
  ("other" = embeddings, final norm, head). PNG through matplotlib's Agg backend.
- `injection_table(df)`: the final rows (steps to learn, general-text loss before and after).
- `noise_table(df)`: rows of `probing.subject_noise`; mean probability of the clean answer per scale.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd


def _ok(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["status"] == "ok"] if "status" in df.columns else df


def _level(df: pd.DataFrame, level: str) -> pd.DataFrame:
    df = _ok(df)
    return df[df["level"] == level] if "level" in df.columns else df.iloc[0:0]


def swap_table(df: pd.DataFrame) -> pd.DataFrame:
    cols = [c for c in ("run_id", "model", "mode", "output", "variant_set", "question", "touched_in_input",
                        "answer_before", "p_before", "answer_after", "p_after", "p_original_answer_after", "changed")
            if c in df.columns]
    return _level(df, "answer")[cols].reset_index(drop=True)


def injection_table(df: pd.DataFrame) -> pd.DataFrame:
    cols = [c for c in ("run_id", "model", "layer_set", "lr", "statement_text", "steps_to_learn", "steps_run",
                        "p_answer_before", "p_answer_after", "general_loss_before", "general_loss_after",
                        "general_loss_delta") if c in df.columns]
    return _level(df, "final")[cols].reset_index(drop=True)


def noise_table(df: pd.DataFrame) -> pd.DataFrame:
    part = _level(df, "scale")
    if part.empty:
        return part
    keys = [c for c in ("model", "subject", "scale") if c in part.columns]
    return part.groupby(keys, as_index=False)[["mean_p_original", "frac_original", "mean_rank_original"]].mean()


def plot_update_norms(df: pd.DataFrame, path: str | Path, value: str = "update_norm", max_runs: int = 6) -> Path:
    """Heat maps (layer x step) of `value` (update_norm, grad_norm or weight_change_norm), one per run."""
    from tasks.common.figures import pyplot, save_figure

    plt = pyplot()

    layers = _level(df, "layer").copy()
    if layers.empty:
        raise ValueError("no fact_injection layer rows to plot")
    layers["row"] = layers["layer"].map(lambda v: "other" if v is None or (isinstance(v, float) and np.isnan(v))
                                        else f"L{int(v)}")
    runs = list(dict.fromkeys(layers["run_id"])) if "run_id" in layers.columns else [None]
    runs = runs[:max_runs]
    grids = [_layer_grid(layers if run is None else layers[layers["run_id"] == run], value) for run in runs]
    finite = np.concatenate([g.to_numpy(dtype=float).ravel() for g in grids])
    finite = finite[np.isfinite(finite)]
    vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    fig, axes = plt.subplots(len(runs), 1, figsize=(9, 2.4 * len(runs) + 0.8), squeeze=False, layout="constrained")
    image = None
    for ax, run, grid in zip(axes[:, 0], runs, grids, strict=True):
        part = layers if run is None else layers[layers["run_id"] == run]
        image = ax.imshow(grid.to_numpy(dtype=float), aspect="auto", cmap="viridis", interpolation="nearest",
                          vmin=vmin, vmax=vmax)  # one colour scale for every run of the figure
        ax.set_yticks(range(len(grid.index)), list(grid.index), fontsize=9)
        step_ticks = list(range(0, grid.shape[1], max(1, grid.shape[1] // 12)))
        ax.set_xticks(step_ticks, [str(int(grid.columns[i])) for i in step_ticks], fontsize=9)
        ax.set_xlabel("step", fontsize=10)
        ax.set_ylabel("layer", fontsize=10)
        label = ""
        if "layer_set" in part.columns:
            label = f"trainable: {part['layer_set'].iloc[0]}"
        if "lr" in part.columns:
            label += f", lr {part['lr'].iloc[0]:g}"
        ax.set_title(label or str(run), fontsize=10)
    bar = fig.colorbar(image, ax=list(axes[:, 0]), shrink=0.9)
    bar.set_label(value.replace("_", " "), fontsize=10)
    bar.ax.tick_params(labelsize=9)
    return save_figure(fig, path, dpi=120)


def _layer_grid(part: pd.DataFrame, value: str) -> pd.DataFrame:
    """`value` per (layer row, step), layers in order and "other" last."""
    grid = part.pivot_table(index="row", columns="step", values=value, aggfunc="mean")
    order = sorted([r for r in grid.index if r != "other"], key=lambda r: int(r[1:])) + (
        ["other"] if "other" in grid.index else [])
    return grid.loc[order]


def report_swap(df: pd.DataFrame, out_dir: Path) -> list[object]:
    """`orchestrator report` hook: the answer-change table of embedding swaps / noise."""
    table = swap_table(df)
    if table.empty:
        return ["no embedding_swap answer rows"]
    return [table]


def report_injection(df: pd.DataFrame, out_dir: Path) -> list[object]:
    """`orchestrator report` hook: per-layer heat maps of update norms and of gradient norms (Adam's first
    steps have near-equal update norms in every trainable layer: the gradient map shows where it pushes),
    and the final table of injections."""
    if _level(df, "layer").empty:
        return ["no fact_injection layer rows"]
    out = Path(out_dir)
    return [plot_update_norms(df, out / "fact_injection_update_norms.png"),
            plot_update_norms(df, out / "fact_injection_grad_norms.png", value="grad_norm"), injection_table(df)]


def report_noise(df: pd.DataFrame, out_dir: Path) -> list[object]:
    """`orchestrator report` hook: clean-answer probability against noise scale per subject."""
    table = noise_table(df)
    return [table] if not table.empty else ["no subject_noise rows"]
