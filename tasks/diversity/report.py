"""Figures and tables of the diversity family, drawn from stored rows (pandas DataFrames).

- `plot_diversity(df, path)`: rows of `diversity.output_diversity`; each metric against temperature, one
  line per model, one column of panels per prompt set; mean over prompts with a band of +- 2 standard
  errors (as the original's notebooks draw it). PNG through matplotlib's Agg backend.
- `entropy_table(df)`: rows of `diversity.next_token`; one line per model with perplexity, entropy,
  confidence and the vocabulary shares of the average next-token distribution.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

# Metrics drawn by default: one per kind (embedding, n-gram overlap, kernel diversity, distinct n-grams).
DEFAULT_METRICS = ("cosine_similarity", "selfBleuSmoothed", "vendi_jaccard_2", "distinct_2")

# "Higher means more diverse" (True) or "less diverse" (False), shown in the panel titles.
DIRECTION = {
    "cosine_similarity": False,
    "selfBleuSmoothed": False,
    "average_pairwise_jaccard_2": False,
    "average_pairwise_jaccard_3": False,
    "average_pairwise_jaccard_4": False,
    "average_pairwise_ncd": True,
    "vendi_jaccard_2": True,
    "vendi_cosine": True,
    "distinct_1": True,
    "distinct_2": True,
    "distinct_3": True,
}

ENTROPY_COLUMNS = (
    "perplexity",
    "entropy",
    "confidence",
    "top1_accuracy",
    "vocab_share_70",
    "vocab_share_90",
    "n_docs",
    "n_tokens",
)


def _ok(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["status"] == "ok"] if "status" in df.columns else df


def diversity_summary(
    df: pd.DataFrame, metrics: Sequence[str] = DEFAULT_METRICS, max_num_words: int | None = None
) -> pd.DataFrame:
    """Mean, standard error and prompt count of each metric per (model, prompt_set, temperature)."""
    df = _ok(df)
    if "max_num_words" in df.columns and df["max_num_words"].nunique() > 1:
        cap = max_num_words if max_num_words is not None else df["max_num_words"].max()
        df = df[df["max_num_words"] == cap]
    metrics = [m for m in metrics if m in df.columns and df[m].notna().any()]
    keys = [k for k in ("model", "prompt_set", "temperature") if k in df.columns]
    rows = []
    for group, part in df.groupby(keys, sort=True):
        group = group if isinstance(group, tuple) else (group,)
        row = dict(zip(keys, group, strict=True))
        for metric in metrics:
            values = part[metric].dropna().to_numpy(dtype=float)
            row[metric] = values.mean() if len(values) else np.nan
            row[f"{metric}_se"] = values.std(ddof=0) / np.sqrt(len(values)) if len(values) else np.nan
        row["n_prompts"] = len(part)
        rows.append(row)
    return pd.DataFrame(rows)


def plot_diversity(
    df: pd.DataFrame,
    path: str | Path,
    metrics: Sequence[str] = DEFAULT_METRICS,
    max_num_words: int | None = None,
) -> Path:
    """Draw diversity against temperature per model (and prompt set) into a PNG at `path`; return the path.

    `df`: rows of `diversity.output_diversity` (failed runs are skipped). With several word caps, the
    largest (or `max_num_words`) is drawn. Metrics absent or all-NaN (cosine without an embedder) are left out.
    """
    from tasks.common.figures import pyplot, save_figure

    plt = pyplot()

    summary = diversity_summary(df, metrics, max_num_words)
    metrics = [m for m in metrics if m in summary.columns]
    if summary.empty or not metrics:
        raise ValueError("no diversity rows with metric values to plot")
    sets = sorted(summary["prompt_set"].unique()) if "prompt_set" in summary.columns else [None]
    models = list(dict.fromkeys(_ok(df)["model"])) if "model" in summary.columns else [None]
    colours = {model: f"C{i % 10}" for i, model in enumerate(models)}
    fig, axes = plt.subplots(
        len(metrics), len(sets), figsize=(4.2 * len(sets), 2.8 * len(metrics)), squeeze=False, sharex=True
    )
    for col, prompt_set in enumerate(sets):
        part = summary if prompt_set is None else summary[summary["prompt_set"] == prompt_set]
        for row, metric in enumerate(metrics):
            ax = axes[row][col]
            for model in models:
                line = part if model is None else part[part["model"] == model]
                line = line.sort_values("temperature")
                mean, se = line[metric].to_numpy(float), line[f"{metric}_se"].to_numpy(float)
                ax.plot(line["temperature"], mean, marker="o", label=str(model), color=colours[model])
                ax.fill_between(line["temperature"], mean - 2 * se, mean + 2 * se, alpha=0.2, color=colours[model])
            arrows: dict[bool | None, str] = {True: " (higher = more diverse)", False: " (higher = less diverse)"}
            arrow = arrows.get(DIRECTION.get(metric), "")
            ax.set_title(f"{prompt_set or ''} {metric}{arrow}".strip(), fontsize=9)
            if row == len(metrics) - 1:
                ax.set_xlabel("temperature")
    axes[0][0].legend(fontsize=7)
    return save_figure(fig, path, dpi=110)


def entropy_table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per model (and per dataset when several) of the `diversity.next_token` model-level rows.

    Columns: perplexity, entropy (nats), confidence, top1_accuracy, vocab_share_70, vocab_share_90,
    n_docs, n_tokens; models in the order they first appear.
    """
    df = _ok(df)
    if "level" in df.columns:
        df = df[df["level"] == "model"]
    keys = ["model"] + [k for k in ("dataset", "max_docs") if k in df.columns and df[k].nunique(dropna=False) > 1]
    columns = [c for c in ENTROPY_COLUMNS if c in df.columns]
    order = list(dict.fromkeys(df["model"]))
    table = df.groupby(keys, sort=False)[columns].mean()
    table = table.reindex(sorted(table.index, key=lambda k: order.index(k[0] if isinstance(k, tuple) else k)))
    for col in ("n_docs", "n_tokens"):
        if col in table.columns:
            table[col] = table[col].round().astype(int)
    return table


def report_next_token(df: pd.DataFrame, out_dir: Path) -> list[object]:
    """`orchestrator report` hook: the per-model entropy and perplexity table."""
    return [entropy_table(df).reset_index()]


def report_output_diversity(df: pd.DataFrame, out_dir: Path) -> list[object]:
    """`orchestrator report` hook: diversity against temperature per model (PNG)."""
    return [plot_diversity(df, Path(out_dir) / "diversity_vs_temperature.png")]
