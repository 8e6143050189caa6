"""Summary tables of the attribution rows, as the ReAGent original reported them.

- `method_table(df)`: one line per method (and model / dataset / task when present, and any ReAGent
  or metric setting that varies, e.g. the robustness stage's replace_ratio x max_steps x num_probes;
  seeds are pooled): mean Soft-NS,
  Soft-NC and their random-baseline means, and the log ratios the original tabulated,
    log_ratio_ns = ln(sum_e NS_e / sum_e randomNS_e), NS_e = mean over example e's target tokens,
  which is ln(mean NS / mean random NS) at token level (one target per example;
  summarise_tokenlevel_log.py) and the per-prompt aggregation of summarise_sequencelevel.py at
  sequence level. Same for NC. Positive = more faithful than random.
- `example_table(df)`: one line per example (the README / Colab table): its target tokens joined by
  '$' and metric_soft_ns = ln(sum_t NS_t / sum_t randomNS_t) over its targets, likewise NC.
Both tables show, on ReAGent's lines, the rule that scored the targets no probe stopped on
(`on_no_convergence`: "nan" = the original's Soft-NS 0 / Soft-NC 1, "mean_all" = the mean of all
probes) and keep the two rules apart; the column is empty on the baselines' lines, which it does not affect.
- `to_markdown(table)`: a plain Markdown rendering (no extra dependency).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

GROUP_CANDIDATES = ("task", "model", "dataset", "prompts", "method")
# settings that split a table when they vary (seed does not: repetitions are pooled)
SETTING_COLUMNS = ("dtype", "keep_top_n", "keep_ratio", "stop_top_k", "replace_ratio", "max_steps", "num_probes",
                   "sampler", "normalization", "distance", "original_sequence_attention")
METRICS = ("soft_ns", "random_soft_ns", "soft_nc", "random_soft_nc")
RULE_COLUMN = "on_no_convergence"  # ReAGent only: how targets no probe stopped on were scored


def _with_rule(df: pd.DataFrame) -> pd.DataFrame:
    """The rows with the no-convergence rule kept on ReAGent's rows and blanked on the baselines'."""
    if RULE_COLUMN not in df.columns or "method" not in df.columns or not (df["method"] == "reagent").any():
        return df
    return df.assign(**{RULE_COLUMN: df[RULE_COLUMN].where(df["method"] == "reagent", "")})


def _example_key(df: pd.DataFrame) -> str:
    if "prompt_id" in df and df["prompt_id"].notna().any():
        return "prompt_id"
    return "example_id"


def _log_ratio(num: float, den: float) -> float:
    if not (num > 0 and den > 0):
        return float("nan")
    return float(np.log(num / den))


def _groups(df: pd.DataFrame, by: Sequence[str] | None) -> list[str]:
    if by is None:
        cols = [c for c in GROUP_CANDIDATES if c in df.columns]
        cols += [c for c in SETTING_COLUMNS if c in df.columns and df[c].nunique(dropna=False) > 1]
        if RULE_COLUMN in df.columns and "method" in df.columns and (df["method"] == "reagent").any():
            cols.append(RULE_COLUMN)
    else:
        cols = list(by)
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise KeyError(f"group columns {missing} are not in the rows; columns: {', '.join(df.columns)}")
    return cols


def method_table(df: pd.DataFrame, by: Sequence[str] | None = None) -> pd.DataFrame:
    """Per-method faithfulness: means of the four metrics, n, and ln ratios against random (see module doc)."""
    if "status" in df.columns:
        df = df[df["status"].fillna("ok") == "ok"]
    df = _with_rule(df)
    groups = _groups(df, by)
    key = _example_key(df)
    out = []
    for values, part in df.groupby(groups, dropna=False, sort=True) if groups else [((), df)]:
        values = values if isinstance(values, tuple) else (values,)
        per_example = part.groupby(key, dropna=False)[list(METRICS)].mean()
        sums = per_example.sum()
        row = dict(zip(groups, values, strict=True))
        row.update({
            "n_examples": len(per_example),
            "n_targets": len(part),
            **{m: float(part[m].mean()) for m in METRICS},
            "log_ratio_ns": _log_ratio(sums["soft_ns"], sums["random_soft_ns"]),
            "log_ratio_nc": _log_ratio(sums["soft_nc"], sums["random_soft_nc"]),
        })
        if "converged" in part and part["converged"].notna().any():
            row["converged_share"] = float(part["converged"].dropna().astype(bool).mean())
        out.append(row)
    return pd.DataFrame(out)


def example_table(df: pd.DataFrame, by: Sequence[str] | None = None) -> pd.DataFrame:
    """Per example (prompt): target tokens and ln(sum NS / sum random NS), ln(sum NC / sum random NC)."""
    df = _with_rule(df)
    groups = _groups(df, by)
    key = _example_key(df)
    out = []
    for values, part in df.groupby([*groups, key], dropna=False, sort=True):
        values = values if isinstance(values, tuple) else (values,)
        row = dict(zip([*groups, key], values, strict=True))
        order = part.sort_values("target_pos") if "target_pos" in part else part
        row.update({
            "target_tokens": "$".join(str(t) for t in order["target_token"]),
            "metric_soft_ns": _log_ratio(part["soft_ns"].sum(), part["random_soft_ns"].sum()),
            "metric_soft_nc": _log_ratio(part["soft_nc"].sum(), part["random_soft_nc"].sum()),
        })
        out.append(row)
    return pd.DataFrame(out)


def to_markdown(table: pd.DataFrame, digits: int = 3) -> str:
    """A Markdown table, floats rounded to `digits`."""
    def fmt(v: object) -> str:
        if isinstance(v, float):
            return "nan" if np.isnan(v) else f"{v:.{digits}f}"
        return str(v)

    cols = list(table.columns)
    lines = ["| " + " | ".join(cols) + " |", "| " + " | ".join("---" for _ in cols) + " |"]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines)


def report_rows(df: pd.DataFrame, out_dir: object) -> list[object]:
    """`orchestrator report` hook: the per-method table (the original's log ratios against random)."""
    return [method_table(df)]
