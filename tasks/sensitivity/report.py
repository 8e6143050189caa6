"""Report helpers for the sensitivity stages: S against n per map (PNG) and the generalisation table.

Both take the stage's result rows as a pandas DataFrame (parameter columns plus the task's metric
columns); columns that a sweep did not vary may be absent.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

SENSITIVITY_GROUPS = ("dataset", "layer", "d", "L")
GENERALISATION_GROUPS = ("dataset", "layer", "map", "training", "optim", "d", "n", "N")
MAP_ORDER = ("rf", "drf", "raf", "raf_relu")


def _ok(df: Any) -> Any:
    return df[df["status"] == "ok"] if "status" in df.columns else df


def plot_sensitivity(df: Any, path: str | Path) -> Path:
    """One panel per map: mean S against n (log-log) with standard-error bars, a line per (dataset, layer,
    d, L); RF-like maps get a dotted n^(-1/2) reference through their first point. Returns the PNG path."""
    from tasks.common.figures import pyplot, save_figure

    plt = pyplot()
    from matplotlib.ticker import FormatStrFormatter, NullFormatter, ScalarFormatter

    df = _ok(df).dropna(subset=["S", "n"])
    if "map" not in df.columns:
        raise ValueError("plot_sensitivity needs a `map` column (the word_sensitivity rows' parameter)")
    maps = [m for m in MAP_ORDER if m in set(df["map"])] + sorted(set(df["map"]) - set(MAP_ORDER))
    if not maps:
        raise ValueError("no sensitivity rows to plot")
    groups = [g for g in SENSITIVITY_GROUPS if g in df.columns and df[g].nunique(dropna=False) > 1]
    fig, axes = plt.subplots(1, len(maps), figsize=(4.2 * len(maps), 3.6), squeeze=False)
    for ax, name in zip(axes[0], maps, strict=True):
        part = df[df["map"] == name]
        reference = name in ("rf", "drf")
        for key, sub in part.groupby(groups, dropna=False) if groups else [((), part)]:
            stats = sub.groupby("n")["S"].agg(["mean", "std", "count"]).reset_index()
            err = stats["std"].fillna(0) / stats["count"].pow(0.5)
            key = key if isinstance(key, tuple) else (key,)
            label = ", ".join(f"{g}={v}" for g, v in zip(groups, key, strict=True)) or name
            ax.errorbar(stats["n"], stats["mean"], yerr=err, marker="o", ms=3, capsize=2, label=label)
            if reference and len(stats):  # once per panel: S proportional to n^(-1/2)
                n0, s0 = float(stats["n"].iloc[0]), float(stats["mean"].iloc[0])
                ns = stats["n"].astype(float)
                ax.plot(ns, s0 * (ns / n0).map(lambda r: 1 / math.sqrt(r)), ":", color="grey", lw=1,
                        label="n^(-1/2)")
                reference = False
        ax.set(xscale="log", yscale="log", xlabel="n (context length)", title=name)
        ax.set_xticks(sorted(part["n"].unique()))
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.yaxis.set_major_formatter(FormatStrFormatter("%.2g"))
        ax.yaxis.set_minor_formatter(FormatStrFormatter("%.2g"))
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=6)
    axes[0][0].set_ylabel("word sensitivity S")
    return save_figure(fig, path, dpi=120)


def generalisation_table(df: Any) -> Any:
    """Per (dataset, layer, map, training, optim, d, n, N): runs, mean t0, t1, D0, D1, mean D1 * y and the
    share of repetitions whose D1 lies on the side of -y (success: the second training labels the
    modified context -y)."""
    import pandas as pd

    df = _ok(df).dropna(subset=["D1"]).copy()
    groups = [g for g in GENERALISATION_GROUPS if g in df.columns]
    y = df["y"] if "y" in df.columns else 1.0
    df["D1_times_y"] = df["D1"] * y
    df["success"] = (df["D1_times_y"] < 0).astype(float)
    table = df.groupby(groups, dropna=False).agg(
        runs=("D1", "size"), t0=("t0", "mean"), t1=("t1", "mean"), D0=("D0", "mean"), D1=("D1", "mean"),
        D1_times_y=("D1_times_y", "mean"), success=("success", "mean"),
    )
    return pd.DataFrame(table).reset_index()


def decay_ratios(df: Any) -> Any:
    """Per (dataset, layer, map, d, L): mean S at the largest n over mean S at the smallest n. The paper's
    finding: near sqrt(n_min / n_max) for rf, near 1 (above 0.7) for raf, in between for raf_relu."""
    import pandas as pd

    df = _ok(df).dropna(subset=["S"])
    groups = [g for g in ("dataset", "layer", "map", "d", "L") if g in df.columns]
    out = []
    for key, sub in df.groupby(groups, dropna=False):
        means = sub.groupby("n")["S"].mean()
        key = key if isinstance(key, tuple) else (key,)
        out.append({**dict(zip(groups, key, strict=True)),
                    "n_min": int(means.index.min()), "n_max": int(means.index.max()),
                    "S_n_min": float(means.iloc[0]), "S_n_max": float(means.iloc[-1]),
                    "ratio": float(means.iloc[-1] / means.iloc[0])})
    return pd.DataFrame(out)


def report_word_sensitivity(df: Any, out_dir: str | Path) -> list[Any]:
    """`report` hook for sensitivity.word_sensitivity: the S-against-n figure, mean S per point and the
    decay ratios S(n_max) / S(n_min)."""
    df = _ok(df)
    groups = [g for g in ("dataset", "layer", "map", "d", "L", "n") if g in df.columns]
    table = df.groupby(groups, dropna=False)["S"].agg(["mean", "std", "count"]).reset_index()
    return [plot_sensitivity(df, Path(out_dir) / "sensitivity.png"),
            table.rename(columns={"mean": "S_mean", "std": "S_std"}), decay_ratios(df)]


def report_generalisation(df: Any, out_dir: str | Path) -> list[Any]:
    """`report` hook for sensitivity.generalisation: the generalisation table."""
    return [generalisation_table(df)]
