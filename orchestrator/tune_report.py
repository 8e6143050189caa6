"""`report` for tune stages: per group, Optuna's plots on a study rebuilt from the stored trials.

No Optuna database is kept: each group's study is rebuilt in memory from the stage's rows (finished
trials with their values, pruned ones with their stored curves, failed ones as FAIL), in the order
the trials started, with `optuna.trial.create_trial` + `study.add_trials`. Written per group, under
`<report>/<stage>/`: `tune-<group>-history.png` (optimisation history), `-importances.png`
(parameter importances, fANOVA), `-parallel.png` (parallel coordinates), and for a multi-objective
stage `-pareto.png` (the Pareto front). Printed: the best config per group with each constraint's
slack (how far inside its bound the chosen trial is; negative: violated).
"""

from __future__ import annotations

import math
import re
import warnings
from pathlib import Path
from typing import Any

import pandas as pd

from orchestrator.plan import SweepPlan
from orchestrator.schema import OK, PRUNED, from_column
from orchestrator.select import Constraint
from orchestrator.store import ResultStore
from orchestrator.summary import pyplot
from orchestrator.tune import Group, curves


def slack(rule: Constraint, value: float | None) -> float:
    """How far `value` is inside the constraint's bound (negative: outside; nan: no value)."""
    if value is None or not math.isfinite(value):
        return math.nan
    return rule.bound - value if rule.op in ("<=", "<") else value - rule.bound if rule.op in (">=", ">") else (
        -abs(value - rule.bound))


def group_studies(sweep: SweepPlan, store: ResultStore, stage: str) -> dict[str, Any]:
    """group label -> an in-memory Optuna study holding the group's stored trials."""
    import optuna
    from optuna.trial import TrialState

    plan = sweep.stages[stage]
    tune = plan.stage.tune
    assert tune is not None
    table = store.read_stage(stage)
    if table.num_rows == 0:
        return {}
    df = table.to_pandas().sort_values("started_at", kind="stable")
    stored_curves = curves(store, stage, tune.metrics[0])
    directions = ["maximize" if m == "max" else "minimize" for m in tune.modes]
    studies: dict[str, Any] = {}
    for group in plan.groups:
        study = optuna.create_study(directions=directions)  # type: ignore[arg-type]
        made = []
        for run_id, rows in df.groupby("run_id", sort=False):
            first = rows.iloc[0]
            params = {k: from_column(first[k]) for k in plan.distributions if k in rows.columns}
            if len(params) != len(plan.distributions) or not _member(group, first):
                continue
            status = first["status"]
            values = [float(pd.to_numeric(rows[m], errors="coerce").mean()) if m in rows.columns else math.nan
                      for m in tune.metrics]
            state = (TrialState.COMPLETE if status == OK and all(math.isfinite(v) for v in values)
                     else TrialState.PRUNED if status == PRUNED else TrialState.FAIL)
            try:
                made.append(optuna.trial.create_trial(
                    params=params, distributions=plan.distributions, state=state,
                    values=values if state == TrialState.COMPLETE else None,
                    intermediate_values=stored_curves.get(str(run_id)) or None,
                    user_attrs={"run_id": str(run_id)}))
            except ValueError:  # a stored trial outside today's space
                continue
        study.add_trials(made)
        studies[group.label] = study
    return studies


def _member(group: Group, row: Any) -> bool:
    return group.contains({k: from_column(row[k]) for k in group.base if k in row.index})


def _slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", label)[:80]


def tune_report(sweep: SweepPlan, store: ResultStore, stage: str, out_dir: Path) -> list[Any]:
    """Figures written (Paths), the best config per group with constraint slack (a DataFrame), notes."""
    plan = sweep.stages[stage]
    tune = plan.stage.tune
    if tune is None:
        return []
    plt = pyplot()  # the Agg backend, before optuna's visualisations import pyplot
    from optuna.trial import TrialState
    from optuna.visualization import matplotlib as ovm

    items: list[Any] = []
    target = out_dir / stage
    for label, study in group_studies(sweep, store, stage).items():
        done = study.get_trials(states=(TrialState.COMPLETE,))
        if not done:
            items.append(f"{stage}: group {label}: no finished trial to plot")
            continue
        first: dict[str, Any] = {}
        if tune.multi:  # history, importances and parallel coordinates of the first metric
            first = {"target": lambda t: t.values[0], "target_name": tune.metrics[0]}
        plots: list[tuple[str, Any, dict[str, Any]]] = [
            ("history", ovm.plot_optimization_history, first),
            ("importances", ovm.plot_param_importances, first),
            ("parallel", ovm.plot_parallel_coordinate, first),
        ]
        if tune.multi:
            plots.append(("pareto", ovm.plot_pareto_front, {"target_names": tune.metrics}))
        target.mkdir(parents=True, exist_ok=True)
        for name, draw, options in plots:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    axes = draw(study, **options)
            except (ValueError, RuntimeError, ZeroDivisionError) as exc:  # e.g. importances of one trial
                items.append(f"{stage}: group {label}: no {name} plot ({exc})")
                continue
            figure = axes.figure if hasattr(axes, "figure") else axes.flat[0].figure
            path = target / f"tune-{_slug(label)}-{name}.png"
            figure.savefig(path, dpi=100, bbox_inches="tight")
            plt.close(figure)
            items.append(path)
    best = _best_with_slack(sweep, store, stage)
    if not best.empty:
        items.append(best)
    return items


def _best_with_slack(sweep: SweepPlan, store: ResultStore, stage: str) -> pd.DataFrame:
    """The chosen trial (single metric) or front points (several) per group, with each constraint's slack."""
    plan = sweep.stages[stage]
    tune = plan.stage.tune
    assert tune is not None
    rows = [r for r in store.best_rows(stage) if r.get("feasible") and r.get("pareto_rank") in (None, 0)]
    if not rows:
        return pd.DataFrame()
    table = store.read_stage(stage).to_pandas()
    means = table[table["status"] == OK].groupby("run_id").mean(numeric_only=True)
    out = []
    for row in rows:
        run = means.loc[row["best_run_id"]] if row["best_run_id"] in means.index else pd.Series(dtype=float)
        entry: dict[str, Any] = {"group": row["group"], "run_id": row["best_run_id"]}
        for metric in tune.metrics:
            entry[metric] = run.get(metric, math.nan)
        entry["config"] = row["best_params"]
        for rule in plan.constraints:
            entry[f"slack({rule})"] = slack(rule, run.get(rule.metric))
        out.append(entry)
    return pd.DataFrame(out)
