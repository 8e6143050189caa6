"""`report`: a summary table per stage, plus the figures and tables each task family provides.

A family adds report hooks in its `__init__.py`: `REPORTS = {"family.task": "module:function"}` where
`function(df, out_dir) -> list` of figure paths written, pandas DataFrames (printed as tables) or text;
`df` holds the stage's ok rows.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

import pandas as pd
from rich.table import Table

from orchestrator.plan import SweepPlan
from orchestrator.schema import OK, RESERVED_COLUMNS
from orchestrator.store import ResultStore
from orchestrator.tune_report import tune_report

MAX_ROWS = 40
MAX_METRICS = 8


def report_hooks() -> dict[str, str]:
    import pkgutil

    import tasks

    hooks: dict[str, str] = {}
    for info in pkgutil.iter_modules(tasks.__path__):
        if info.ispkg:
            hooks.update(getattr(importlib.import_module(f"tasks.{info.name}"), "REPORTS", {}))
    return hooks


def summary_frame(df: pd.DataFrame, params: list[str]) -> pd.DataFrame:
    """Mean of every numeric metric over the parameters that vary, ok runs only."""
    ok = df[df["status"] == OK]
    varying = [p for p in params if p in ok.columns and ok[p].nunique(dropna=False) > 1]
    metrics = [c for c in ok.columns if c not in RESERVED_COLUMNS and c not in params
               and pd.api.types.is_numeric_dtype(ok[c]) and not pd.api.types.is_bool_dtype(ok[c])]
    metrics = [c for c in metrics if ok[c].notna().any()][:MAX_METRICS]
    if not metrics:
        return pd.DataFrame()
    if not varying:
        return ok[metrics].mean().to_frame("mean").T
    return ok.groupby(varying, dropna=False)[metrics].mean().reset_index()


def _table(title: str, frame: pd.DataFrame) -> Table:
    table = Table(title=title, title_justify="left")
    for column in frame.columns:
        table.add_column(str(column))
    for row in frame.head(MAX_ROWS).itertuples(index=False):
        table.add_row(*[f"{v:.4g}" if isinstance(v, float) else str(v) for v in row])
    if len(frame) > MAX_ROWS:
        table.caption = f"{len(frame) - MAX_ROWS} more rows: read the Parquet files for all"
    return table


def _chosen(params_json: str | None, keys: list[str]) -> str:
    """The searched parameters of a chosen config, e.g. `lr=0.0006848, epochs=5`."""
    if not params_json:
        return "-"
    params = json.loads(params_json)
    return ", ".join(f"{k}={params[k]:.4g}" if isinstance(params[k], float) else f"{k}={params[k]}" for k in keys)


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
        items += tune_report(sweep, store, stage, out_dir)  # per-group Optuna plots, constraint slack
    target = report_hooks().get(plan.task.name)
    summary = summary_frame(df, list(plan.task.params.model_fields))
    if not target and not summary.empty:
        items.append(_table(f"{stage}: mean of each metric (first {MAX_METRICS})", summary))
    if target:
        module, _, attr = target.partition(":")
        out_dir.mkdir(parents=True, exist_ok=True)
        for item in getattr(importlib.import_module(module), attr)(df[df["status"] == OK], out_dir / stage):
            if isinstance(item, pd.DataFrame):
                items.append(_table(f"{stage}: {plan.task.name}", item))
            elif isinstance(item, Path):
                items.append(f"{stage}: figure written to {item}")
            else:
                items.append(item)
    return items
