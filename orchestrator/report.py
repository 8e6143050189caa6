"""`report`: a summary table per stage, plus the figures and tables each task family provides.

A family adds report hooks in its `__init__.py` (read by `orchestrator.registry`):
`REPORTS = {"family.task": "module:function"}` where
`function(df, out_dir) -> list` of figure paths written, pandas DataFrames (printed as tables) or text;
`df` holds the stage's ok rows.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
from rich.table import Table

from orchestrator.plan import SweepPlan
from orchestrator.registry import import_target, report_map
from orchestrator.schema import OK
from orchestrator.store import ResultStore
from orchestrator.summary import SEED, stage_runs, step_figure, summary_figure, summary_frame, with_reported_steps
from orchestrator.tune_report import tune_report

MAX_ROWS = 40


def report_hooks() -> dict[str, str]:
    """Task name -> report hook "module:function", from the registry's one walk of the families."""
    return report_map()


def _table(title: str, frame: pd.DataFrame) -> Table:
    table = Table(title=title or None, title_justify="left")
    for column in frame.columns:
        table.add_column(str(column))
    for row in frame.head(MAX_ROWS).itertuples(index=False):
        table.add_row(*[f"{v:.4g}" if isinstance(v, float) else str(v) for v in row])
    if len(frame) > MAX_ROWS:
        table.caption = f"{len(frame) - MAX_ROWS} more rows: read the Parquet files for all"
    return table


def _chosen(params_json: object, keys: list[str]) -> str:
    """The searched parameters of a chosen config, e.g. `lr=0.0006848, epochs=5` (`-`: no feasible trial)."""
    if not isinstance(params_json, str) or not params_json:
        return "-"
    params = json.loads(params_json)
    return ", ".join(f"{k}={params[k]:.4g}" if isinstance(params[k], float) else f"{k}={params[k]}" for k in keys)


def generic_report(df: pd.DataFrame, params: list[str], stage: str, out_dir: Path,
                   reported: pd.DataFrame | None = None) -> list[Any]:
    """Any task's summary: per configuration, each metric's mean ± std over seeds; a figure of each metric
    against each swept parameter, and step curves when runs report steps (`reported`: the stage's
    `ctx.report` rows, else a `step` column of the result rows)."""
    runs = stage_runs(df, params)
    if runs is None:
        return []
    notes = []
    if runs.steps is not None:
        notes.append("final step of each run")
    if reported is not None and not reported.empty:
        runs = with_reported_steps(runs, reported)
    if runs.indexes:
        notes.append(f"mean over {', '.join(runs.indexes)} within a run")
    if SEED in runs.swept:
        notes.append("mean ± std over seeds")
    if runs.more_metrics:
        notes.append(f"first {len(runs.metrics)} metrics, {runs.more_metrics} more in the Parquet files")
    items: list[Any] = [f"{stage}: " + ("; ".join(notes) or "metrics per run"), _table("", summary_frame(runs))]
    figures = (summary_figure(runs, out_dir / stage / "summary.png"), step_figure(runs, out_dir / stage / "steps.png"))
    for figure in figures:
        if figure is not None:
            items.append(f"{stage}: figure written to {figure}")
    return items


def stage_report(sweep: SweepPlan, store: ResultStore, stage: str, out_dir: Path) -> list[Any]:
    table = store.read_stage(stage)
    if table.num_rows == 0:
        return [f"{stage}: no results yet"]
    df = table.to_pandas()
    plan = sweep.stages[stage]
    counts = df.drop_duplicates("run_id")["status"].value_counts().to_dict()
    items: list[Any] = [f"[bold]{stage}[/] ({plan.task.name}): " + ", ".join(f"{v} {k}" for k, v in counts.items())]
    if plan.stage.tune is not None:
        best = pd.DataFrame(store.best_rows(stage))
        if not best.empty:
            space = list(plan.stage.tune.space)
            best["chosen"] = [_chosen(text, space) for text in best["best_params"]]
            shown = ["group", "feasible", "n_trials", "n_feasible", "best_value", "chosen", "best_run_id"]
            items.append(_table(f"{stage}: best config per group ({plan.stage.tune.metric}, "
                                f"{plan.stage.tune.mode}; {'; '.join(plan.stage.tune.constraints) or 'no constraint'})",
                                best[shown]))
        items += [_shown(stage, f"{stage}: best config per group, constraint slack", item)
                  for item in tune_report(sweep, store, stage, out_dir)]  # per-group Optuna plots
    target = report_hooks().get(plan.task.name)
    if not target:
        items += generic_report(df, list(plan.task.params.model_fields), stage, out_dir,
                                store.step_rows(stage).to_pandas())
    if target:
        out_dir.mkdir(parents=True, exist_ok=True)
        items += [_shown(stage, f"{stage}: {plan.task.name}", item)
                  for item in import_target(target)(df[df["status"] == OK], out_dir / stage)]
    return items


def _shown(stage: str, title: str, item: Any) -> Any:
    """A report item as printed: a DataFrame as a table, a figure's path as a line, text as it is."""
    if isinstance(item, pd.DataFrame):
        return _table(title, item)
    if isinstance(item, Path):
        return f"{stage}: figure written to {item}"
    return item
