"""The report of any stage: one value per run, seeds aggregated, and a figure of each metric per parameter.

A stage's rows are in long format, so before anything is averaged:
- a run that returned per-step rows (a `step` column that varies within the run) counts by its final step;
- integer-valued columns that vary within a run and either are named like an index (`prompt_index`,
  `layer`, `position`, ...) or take a distinct value on every row of the run (`feature` 0..k-1) index
  its units: they are never averaged, and the run's metrics are the mean over its units (a 0/1
  `correct` column that repeats within a run stays a metric);
- runs that differ only in `seed` are one configuration: its metrics are the mean and standard deviation
  over those runs, with the number of runs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from orchestrator.schema import OK, RESERVED_COLUMNS

SEED = "seed"
STEP = "step"
MAX_METRICS = 8
MAX_FACETS = 6  # swept parameters drawn per metric
MAX_LINES = 8  # configurations drawn as separate step curves


@dataclass
class StageRuns:
    """A stage's ok runs, one row each, and what the summary is made of."""

    runs: pd.DataFrame  # one row per run: its swept parameters and the mean of each metric over its units
    swept: list[str]  # parameters that vary across runs, `seed` last if it varies
    metrics: list[str]
    indexes: list[str] = field(default_factory=list)  # integer columns that vary within a run (not averaged)
    steps: pd.DataFrame | None = None  # per-step rows (run_id, step, swept, metrics) when runs report steps
    more_metrics: int = 0  # metrics left out past MAX_METRICS
    step_metrics: list[str] = field(default_factory=list)  # the metrics of `steps` (default: `metrics`)

    @property
    def configs(self) -> list[str]:
        """The swept parameters that make a configuration (every one but `seed`)."""
        return [p for p in self.swept if p != SEED]


def stage_runs(df: pd.DataFrame, params: list[str]) -> StageRuns | None:
    """The ok rows of a stage reduced to one row per run (None when no run is ok or nothing is numeric)."""
    ok = df[df["status"] == OK]
    if ok.empty:
        return None
    numeric = [c for c in ok.columns if c not in RESERVED_COLUMNS and c not in params and c != STEP
               and pd.api.types.is_numeric_dtype(ok[c]) and not pd.api.types.is_bool_dtype(ok[c])
               and ok[c].notna().any()]
    steps, final = None, ok
    if STEP in ok.columns and bool((ok.groupby("run_id")[STEP].nunique() > 1).any()):
        final = ok[ok[STEP] == ok.groupby("run_id")[STEP].transform("max")]
    indexes = [c for c in numeric if _is_index(final, c)]
    metrics = [c for c in numeric if c not in indexes]
    if not metrics:
        return None
    swept = [p for p in params if p in ok.columns and ok[p].nunique(dropna=False) > 1]
    swept = [p for p in swept if p != SEED] + ([SEED] if SEED in swept else [])
    if final is not ok:
        steps = ok.groupby(["run_id", STEP], as_index=False).agg({**{p: "first" for p in swept},
                                                                   **{m: "mean" for m in metrics}})
        ok = final
    runs = ok.groupby("run_id", as_index=False).agg({**{p: "first" for p in swept}, **{m: "mean" for m in metrics}})
    return StageRuns(runs, swept, metrics[:MAX_METRICS], indexes, steps, max(0, len(metrics) - MAX_METRICS))


INDEX_NAME = re.compile(r"(^|_)(index|idx|position|pos|layer|head|token|feature|sample|example|prompt|item)s?$")


def _is_index(rows: pd.DataFrame, column: str) -> bool:
    """Whether `column` indexes the units of a run (see the module docstring)."""
    values = rows[column].dropna()
    if values.empty or not bool((values == values.round()).all()):
        return False
    per_run = rows.groupby("run_id")[column]
    if not bool((per_run.nunique() > 1).any()):
        return False
    return bool(INDEX_NAME.search(column)) or bool((per_run.nunique() == per_run.size()).all())


STEP_COLUMNS = ("run_id", "attempt", "step", "reported_at")


def with_reported_steps(stage: StageRuns, reported: pd.DataFrame) -> StageRuns:
    """`stage` with the rows its runs reported through `ctx.report` (the store's step table) as its steps."""
    metrics = [c for c in reported.columns if c not in STEP_COLUMNS and pd.api.types.is_numeric_dtype(reported[c])
               and not pd.api.types.is_bool_dtype(reported[c]) and reported[c].notna().any()][:MAX_METRICS]
    if reported.empty or not metrics or int(reported.groupby("run_id")[STEP].nunique().max()) < 2:
        return stage  # no run reported a curve
    params = stage.runs[["run_id", *stage.swept]]
    steps = reported.merge(params, on="run_id", how="inner")
    stage.steps = steps.groupby(["run_id", STEP], as_index=False).agg(
        {**{p: "first" for p in stage.swept}, **{m: "mean" for m in metrics}})
    stage.step_metrics = metrics
    return stage


def summary_frame(stage: StageRuns) -> pd.DataFrame:
    """Per configuration: each metric as `mean ± std` over seeds (a plain mean for one run) and `runs`."""
    keys = stage.configs
    grouped = stage.runs.groupby(keys, dropna=False) if keys else stage.runs.groupby(lambda _: 0)
    frame = grouped[stage.metrics].agg(["mean", "std", "count"])
    table = pd.DataFrame(index=frame.index)
    for metric in stage.metrics:
        mean, std = frame[(metric, "mean")], frame[(metric, "std")]
        table[metric] = [_mean_std(m, s) for m, s in zip(mean, std, strict=True)]
    table["runs"] = frame[(stage.metrics[0], "count")].astype(int)
    return table.reset_index() if keys else table.reset_index(drop=True)


def _mean_std(mean: float, std: float) -> str:
    if pd.isna(mean):
        return "-"
    return f"{mean:.4g}" if pd.isna(std) else f"{mean:.4g} ± {std:.2g}"


def pyplot() -> Any:
    """matplotlib's pyplot on the Agg backend (files only; no display is needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: Path, dpi: int = 110) -> Path:
    """Lay `fig` out, write it to `path` (parents created) and close it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    pyplot().close(fig)
    return path


def summary_figure(stage: StageRuns, path: Path) -> Path | None:
    """Each metric (rows) against each swept parameter (columns): the mean over the other configurations,
    error bars the standard deviation over seeds (or over the other configurations when there is one seed)."""
    facets = stage.configs[:MAX_FACETS]
    if not facets:
        return None
    plt = pyplot()
    by_config = stage.runs.groupby(facets, dropna=False)[stage.metrics]
    means, stds = by_config.mean().reset_index(), by_config.std().reset_index()
    seeded = SEED in stage.swept
    fig, axes = plt.subplots(len(stage.metrics), len(facets), squeeze=False,
                             figsize=(3.2 * len(facets) + 0.8, 2.6 * len(stage.metrics) + 0.6))
    for row, metric in enumerate(stage.metrics):
        for col, param in enumerate(facets):
            ax = axes[row][col]
            y = means.groupby(param, dropna=False)[metric].mean()
            spread = (stds.groupby(param, dropna=False)[metric].mean() if seeded
                      else means.groupby(param, dropna=False)[metric].std())
            numeric = pd.api.types.is_numeric_dtype(y.index) and not pd.api.types.is_bool_dtype(y.index)
            x = list(y.index) if numeric else list(range(len(y)))
            ax.errorbar(x, y.to_numpy(), yerr=spread.reindex(y.index).fillna(0).to_numpy(), marker="o", capsize=3)
            if not numeric:
                ax.set_xticks(x, [str(v) for v in y.index], rotation=30, ha="right", fontsize=8)
            if row == len(stage.metrics) - 1:
                ax.set_xlabel(param)
            if col == 0:
                ax.set_ylabel(metric)
    fig.suptitle("mean over the other parameters; error bars: std over " + ("seeds" if seeded else "them"),
                 fontsize=10)
    return save_figure(fig, path)


def step_figure(stage: StageRuns, path: Path) -> Path | None:
    """Each metric against `step`: one curve per configuration (mean over seeds), for runs that report steps."""
    if stage.steps is None:
        return None
    plt = pyplot()
    keys, metrics = stage.configs, stage.step_metrics or stage.metrics
    fig, axes = plt.subplots(1, len(metrics), squeeze=False, figsize=(4.2 * len(metrics), 3.2))
    curves = stage.steps.groupby([*keys, STEP], dropna=False)[metrics].mean().reset_index()
    groups = list(curves.groupby(keys, dropna=False)) if keys else [((), curves)]
    for ax, metric in zip(axes[0], metrics, strict=False):
        for label, curve in groups[:MAX_LINES]:
            values = label if isinstance(label, tuple) else (label,)
            ax.plot(curve[STEP], curve[metric], label=", ".join(f"{k}={v}" for k, v in zip(keys, values, strict=True)))
        ax.set_xlabel(STEP)
        ax.set_ylabel(metric)
    if keys:
        axes[0][0].legend(fontsize=7)
    return save_figure(fig, path)
