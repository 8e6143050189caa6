"""Figures and tables of the editing family, drawn from stored rows (pandas DataFrames).

- `plot_trace(df, path)`: rows of `editing.causal_trace`; one heat map (token x layer, colour = restored
  probability) per traced fact and site, subject tokens starred, as the ROME notebooks draw them. PNG
  through matplotlib's Agg backend.
- `average_trace(df)`: the ROME aggregation (notebooks/average_causal_effects.ipynb): tokens bucketed into
  first / middle / last subject token, first token after the subject, further tokens, last token; mean
  indirect effect per (site, bucket, layer) over facts.
- `selection_table(df)`: rows of `editing.finetune`; for a val (tune) stage the best trial per group
  (dataset, method, league) by success among trials inside the degradation bound, for a test (transfer)
  stage the mean and standard error over seeds of the selected configs, with success gains in points.
- `rome_table(df)`: rows of `editing.rome`; efficacy, paraphrase and neighbourhood scores per (model, layer).
- `league_table(summary)`: the paper's test tables (3, 4): initial success, then per league each method's
  change in success (points); `transfer_summary(df)` builds its input from test rows of editing.finetune /
  editing.ensemble / editing.memit, `original_gptj_summary(dir)` from the original's GPT-J summary files
  (the golden test).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

BUCKETS = ("first subject", "middle subject", "last subject", "first after", "further", "last")
SITE_TITLES = {"hidden": "hidden state", "mlp": "MLP output", "attn": "attention output"}


def _ok(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["status"] == "ok"] if "status" in df.columns else df


def _level(df: pd.DataFrame, level: str) -> pd.DataFrame:
    df = _ok(df)
    return df[df["level"] == level] if "level" in df.columns else df


# ---------------------------------------------------------------------------------------------- tracing


def trace_grid(df: pd.DataFrame, fact_index: int, site: str, value: str = "p_restored") -> pd.DataFrame:
    """The (token x layer) grid of one fact and site: index token_index, columns layer."""
    cells = _level(df, "cell")
    part = cells[(cells["fact_index"] == fact_index) & (cells["site"] == site)]
    if "run_id" in part.columns and part["run_id"].nunique() > 1:  # the same fact traced by several runs
        part = part[part["run_id"] == part["run_id"].iloc[0]]
    return part.pivot_table(index="token_index", columns="layer", values=value, aggfunc="mean")


def plot_trace(
    df: pd.DataFrame, path: str | Path, value: str = "p_restored", max_facts: int = 6, facts: list[int] | None = None
) -> Path:
    """Heat maps of restored probability (or `value`, e.g. indirect_effect): rows = facts, columns = sites.

    Token labels come from the rows (subject tokens marked with *), layers on the x axis; each panel's
    title gives the answer and the clean / corrupted probabilities. Writes a PNG at `path`; returns it.
    """
    from tasks.common.figures import pyplot, save_figure

    plt = pyplot()

    cells = _level(df, "cell")
    if cells.empty:
        raise ValueError("no causal-trace cells to plot (were the facts traced? see the level 'fact' rows)")
    fact_ids = facts if facts is not None else sorted(cells["fact_index"].unique())[:max_facts]
    sites = [s for s in ("hidden", "mlp", "attn") if s in set(cells["site"])]
    fig, axes = plt.subplots(len(fact_ids), len(sites), figsize=(4.2 * len(sites), 3.4 * len(fact_ids)), squeeze=False)
    for row, fact in enumerate(fact_ids):
        first = cells[cells["fact_index"] == fact]
        tokens = first.drop_duplicates("token_index").sort_values("token_index")
        labels = [("*" if s else "") + repr(t)[1:-1]
                  for t, s in zip(tokens["token"], tokens["is_subject"], strict=True)]
        for col, site in enumerate(sites):
            ax = axes[row][col]
            grid = trace_grid(df, fact, site, value)
            image = ax.imshow(grid.to_numpy(float), aspect="auto", cmap={"hidden": "Purples", "mlp": "Greens",
                              "attn": "Reds"}[site], vmin=0 if value == "p_restored" else None)
            ax.set_yticks(range(len(labels)), labels, fontsize=7)
            ax.set_xticks(range(grid.shape[1]), [str(int(c)) for c in grid.columns], fontsize=7)
            info = first.iloc[0]
            window = int(first[first["site"] == site]["restore_window"].iloc[0])
            ax.set_title(
                f"{SITE_TITLES[site]} (window {window})\n{info['subject']} -> p clean {info['p_clean']:.2f},"
                f" corrupted {info['p_corrupted']:.2f}",
                fontsize=8,
            )
            ax.set_xlabel("layer", fontsize=8)
            fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    return save_figure(fig, path, dpi=110)


def _bucket(t: int, start: int, end: int, n_tokens: int) -> str:
    if t == n_tokens - 1:
        return "last"
    if t == end - 1:
        return "last subject"
    if t == start:
        return "first subject"
    if start < t < end - 1:
        return "middle subject"
    if t == end:
        return "first after"
    return "further"


def average_trace(df: pd.DataFrame) -> pd.DataFrame:
    """Mean indirect effect per (site, bucket, layer) over facts (each fact's bucket averaged first).

    A single-token subject counts as its last subject token (as the notebook's subject_last).
    """
    cells = _level(df, "cell")
    facts = _level(df, "fact").set_index("fact_index")
    rows = []
    for (fact, site), part in cells.groupby(["fact_index", "site"]):
        meta = facts.loc[fact] if fact in facts.index else None
        assert meta is not None, f"no fact row for traced fact {fact}"
        if isinstance(meta, pd.DataFrame):
            meta = meta.iloc[0]
        start, end = int(meta["subject_start"]), int(meta["subject_end"])
        n_tokens = int(meta["n_tokens"])
        for (bucket, layer), cell in part.groupby(
            [part["token_index"].map(lambda t, s=start, e=end, n=n_tokens: _bucket(int(t), s, e, n)), "layer"]
        ):
            rows.append({"fact_index": fact, "site": site, "bucket": bucket, "layer": int(layer),
                         "indirect_effect": cell["indirect_effect"].mean()})
    if not rows:
        return pd.DataFrame(columns=["site", "bucket", "layer", "indirect_effect", "ci95", "n_facts"])
    per_fact = pd.DataFrame(rows)
    out = per_fact.groupby(["site", "bucket", "layer"])["indirect_effect"].agg(["mean", "std", "count"]).reset_index()
    out["ci95"] = 1.96 * out["std"].fillna(0) / np.sqrt(out["count"])
    out = out.rename(columns={"mean": "indirect_effect", "count": "n_facts"}).drop(columns="std")
    out["bucket"] = pd.Categorical(out["bucket"], BUCKETS, ordered=True)
    return out.sort_values(["site", "bucket", "layer"]).reset_index(drop=True)


# ---------------------------------------------------------------------------------------------- fine-tuning


GROUP_KEYS = ("model", "dataset", "method", "subject_type", "league")  # subject_type: editing.memit
SELECTION_COLUMNS = ("success", "success_before", "success_gain", "success_hard_neg", "degradation_general",
                     "degradation_target", "hard_negative_delta")


def selection_table(
    df: pd.DataFrame,
    bound: float | None = None,
    bound_metric: str = "degradation_general",
    balls: tuple[float, ...] = (),
) -> pd.DataFrame:
    """Per group (model, dataset, method, league: those present):

    - val stage (no `selected_from` column): the best trial by success among those with
      `bound_metric <= bound` (all trials when bound is None), with the trial count and how many were
      inside the bound; ties broken by the lower learning rate, then run id; for each eps in `balls`, a
      column `success_within_<eps>`: the best success among trials with `bound_metric <= eps` (the
      paper's leagues read off one search);
    - test stage (rows carry `selected_from`): mean over the seeds of each metric, the standard error of
      the success gain in points (100 x std / sqrt(n), as report_test_*.py), and the number of seeds.
    """
    agg = _level(df, "aggregate")
    if agg.empty:
        return pd.DataFrame()
    keys = [k for k in GROUP_KEYS if k in agg.columns and agg[k].notna().any()]
    columns = [c for c in SELECTION_COLUMNS if c in agg.columns]
    out = []
    if "selected_from" in agg.columns and agg["selected_from"].notna().any():
        for group, part in agg.groupby(keys, dropna=False, sort=True):
            row = dict(zip(keys, group if isinstance(group, tuple) else (group,), strict=True))
            row.update({c: part[c].astype(float).mean() for c in columns})
            gains = 100 * part["success_gain"].astype(float)
            row["gain_points"] = gains.mean()
            row["gain_stderr"] = gains.std(ddof=0) / math.sqrt(len(part)) if len(part) else math.nan
            row["n_seeds"] = len(part)
            row["selected_from"] = ",".join(sorted(set(map(str, part["selected_from"]))))
            out.append(row)
        return pd.DataFrame(out)
    for group, part in agg.groupby(keys, dropna=False, sort=True):
        row = dict(zip(keys, group if isinstance(group, tuple) else (group,), strict=True))
        inside = part if bound is None else part[part[bound_metric].astype(float) <= bound]
        row["n_trials"], row["n_inside"] = len(part), len(inside)
        if len(inside):
            order = [c for c in ("lr", "run_id") if c in inside.columns]
            best = inside.sort_values(order).sort_values("success", ascending=False, kind="stable").iloc[0]
            row.update({c: best[c] for c in columns})
            row.update({p: best[p] for p in ("lr", "epochs", "lora_rank", "kl_weight") if p in best.index})
        for eps in balls:
            within = part[part[bound_metric].astype(float) <= eps]["success"]
            row[f"success_within_{eps:g}"] = within.max() if len(within) else math.nan
        out.append(row)
    return pd.DataFrame(out)


def rome_table(df: pd.DataFrame) -> pd.DataFrame:
    """Efficacy, paraphrase and neighbourhood scores (means over edits) per (model, edit layer)."""
    agg = _level(df, "aggregate")
    if agg.empty:
        return pd.DataFrame()
    keys = [k for k in ("model", "edit_layer", "clamp_norm_factor", "v_weight_decay") if k in agg.columns
            and (k in ("model", "edit_layer") or agg[k].nunique() > 1)]
    metrics = [m for m in ("efficacy_score", "efficacy_score_before", "paraphrase_score", "neighborhood_score",
                           "neighborhood_abs_change", "degradation_general") if m in agg.columns]
    table = agg.groupby(keys, dropna=False)[metrics].mean()
    table["n_edits"] = agg.groupby(keys, dropna=False).size()
    return table.reset_index()


# ---------------------------------------------------------------------------------------------- report hooks


def report_finetune(df: pd.DataFrame, out_dir: Path) -> list[object]:
    """`orchestrator report` hook: the selection (val: best overall and inside each ball) or transfer
    (test: mean over seeds) table. The stage's own selection, with its constraints, is in best.parquet."""
    items: list[object] = [selection_table(df, balls=(1e-3, 1e-2, 5e-2))]
    agg = _level(df, "aggregate")
    if {"league", "dataset", "success_before"} <= set(agg.columns) and agg["league"].notna().any():
        table = league_table(transfer_summary(agg[agg["league"].notna()]))  # the paper's table layout
        items.append(table.rename_axis("task").reset_index())
    return items


def report_trace(df: pd.DataFrame, out_dir: Path) -> list[object]:
    """`orchestrator report` hook: heat maps of the first traced facts, and the bucketed average effects."""
    items: list[object] = []
    if not _level(df, "cell").empty:
        items.append(plot_trace(df, Path(out_dir) / "causal_trace.png"))
        average = average_trace(df)
        best = average.loc[average.groupby(["site", "bucket"], observed=True)["indirect_effect"].idxmax()]
        items.append(best.rename(columns={"layer": "argmax_layer", "indirect_effect": "max_indirect_effect"}))
    else:
        items.append("no fact was traced (only facts the model predicts correctly are, unless only_correct=false)")
    return items


def report_rome(df: pd.DataFrame, out_dir: Path) -> list[object]:
    """`orchestrator report` hook: ROME scores per model and layer."""
    return [rome_table(df)]


# ---------------------------------------------------------------------------------------------- leagues


LEAGUES = (1e-3, 1e-4, 1e-5)
PAPER_TASK_ORDER = ("country", "company", "stereoset", "verb", "gender", "temporal")


def league_table(summary: pd.DataFrame, methods: tuple[str, ...] | None = None,
                 leagues: tuple[float, ...] | None = None) -> pd.DataFrame:
    """The paper's test table (Tables 3 and 4): rows = tasks then "average", columns "initial" then
    (league, method) = change in success rate in points on test.

    `summary` is long: one row per (task, method, league[, replicate]) with `success` and
    `success_before` (fractions). A cell is 100 x mean(success - success_before) over its rows (the
    original's improvement = mean success - mean initial success, equal by linearity); "initial" is
    100 x the mean of success_before over every row of the task (the GPT-J table averages the initial
    scores of all its full, LoRA and ensemble runs; they differ slightly between runs); "average" is
    the unrounded mean over tasks. Values are not rounded (see `format_league_table`). `leagues`
    defaults to those in the rows, widest first (the paper's 1e-3, 1e-4, 1e-5).
    """
    df = summary.copy()
    df["league"] = df["league"].astype(float)
    if leagues is None:
        leagues = tuple(sorted(set(df["league"]), reverse=True))
    df["gain"] = 100 * (df["success"].astype(float) - df["success_before"].astype(float))
    methods = methods or tuple(dict.fromkeys(df["method"]))
    tasks = [t for t in PAPER_TASK_ORDER if t in set(df["task"])] + sorted(set(df["task"]) - set(PAPER_TASK_ORDER))
    table = pd.DataFrame(index=tasks)
    table["initial"] = 100 * df.groupby("task")["success_before"].mean()
    for eps in leagues:
        part = df[np.isclose(df["league"], eps)]
        for method in methods:
            cell = part[part["method"] == method].groupby("task")["gain"].mean()
            table[f"{eps:g} {method}"] = cell
    table.loc["average"] = table.mean(axis=0, skipna=False)
    return table


def format_league_table(table: pd.DataFrame, decimals: int = 1) -> str:
    """The table as text, rounded as the paper prints it."""
    return table.round(decimals).to_string(float_format=lambda x: f"{x:.{decimals}f}")


def original_gptj_summary(directory: str | Path) -> pd.DataFrame:
    """The original's GPT-J summary rows (plotting/workshop-gptj/{results,initial,intervention}.jsonl) in
    the long format of `league_table`: full / LoRA rows carry success rates (results.jsonl, initial.jsonl,
    matched on task, method, league); the ensemble rows (intervention.jsonl) carry FAILURE rates
    (`score`, `initial_score`), turned into success = 1 - score."""
    directory = Path(directory)
    results = pd.read_json(directory / "results.jsonl", lines=True)
    initial = pd.read_json(directory / "initial.jsonl", lines=True)
    ensemble = pd.read_json(directory / "intervention.jsonl", lines=True)
    keys = ["task", "method", "league"]
    for frame in (results, initial, ensemble):
        frame["league"] = frame["league"].astype(float)
    merged = results.merge(initial[[*keys, "score"]], on=keys, suffixes=("", "_initial"), validate="one_to_one")
    ft = pd.DataFrame({"task": merged["task"], "method": merged["method"], "league": merged["league"],
                       "success": merged["score"], "success_before": merged["score_initial"]})
    ens = pd.DataFrame({"task": ensemble["task"], "method": "ensemble", "league": ensemble["league"],
                        "success": 1 - ensemble["score"], "success_before": 1 - ensemble["initial_score"]})
    return pd.concat([ft, ens], ignore_index=True)


def transfer_summary(df: pd.DataFrame) -> pd.DataFrame:
    """Aggregate rows of test (transfer) runs of editing.finetune / editing.ensemble / editing.memit in the
    long format of `league_table` (task = dataset; one row per replicate)."""
    agg = _level(df, "aggregate")
    method = agg["method"] if "method" in agg.columns else pd.Series("memit", index=agg.index)
    if "subject_type" in agg.columns:  # MEMIT's request forms are separate columns (paper Table 2)
        method = method + agg["subject_type"].map(lambda t: "" if pd.isna(t) else f" ({t} subject)")
    return pd.DataFrame({"task": agg["dataset"], "method": method, "league": agg["league"].astype(float),
                         "success": agg["success"], "success_before": agg["success_before"]})
