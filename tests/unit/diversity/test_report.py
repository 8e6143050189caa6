"""Report helpers on hand-built result tables (the layout the store gives back: params + metric columns)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tasks.diversity.report import diversity_summary, entropy_table, plot_diversity


def diversity_rows() -> pd.DataFrame:
    rows = []
    for model, base in (("base", 0.9), ("narrow", 0.3)):
        for prompt_set in ("creative", "factual"):
            for temperature in (0.5, 1.0):
                for prompt_index in range(3):
                    rows.append({
                        "model": model, "prompt_set": prompt_set, "temperature": temperature,
                        "max_num_words": 20, "prompt_index": prompt_index, "status": "ok",
                        "distinct_2": base * temperature + 0.01 * prompt_index,
                        "selfBleuSmoothed": 1 - base * temperature, "cosine_similarity": np.nan,
                    })  # fmt: skip
    rows.append({**rows[0], "status": "failed", "distinct_2": 99.0})  # failed runs are ignored
    return pd.DataFrame(rows)


def test_diversity_summary_means_and_standard_errors():
    summary = diversity_summary(diversity_rows(), ("distinct_2", "selfBleuSmoothed", "cosine_similarity"))
    first = summary.iloc[0]
    assert (first["model"], first["prompt_set"], first["temperature"]) == ("base", "creative", 0.5)
    assert first["distinct_2"] == pytest.approx(0.45 + 0.01)  # mean of 0.45, 0.46, 0.47
    assert first["distinct_2_se"] == pytest.approx(np.std([0.45, 0.46, 0.47]) / np.sqrt(3))
    assert first["n_prompts"] == 3
    assert "cosine_similarity" not in summary.columns  # all NaN (no embedder): left out


def test_plot_diversity_writes_a_png(tmp_path):
    path = plot_diversity(diversity_rows(), tmp_path / "fig" / "diversity.png")
    assert path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="no diversity rows"):
        plot_diversity(diversity_rows(), tmp_path / "x.png", metrics=("cosine_similarity",))


def test_entropy_table_one_line_per_model():
    rows = [
        {"model": "b", "level": "document", "doc_index": 0, "perplexity": 5.0, "entropy": 1.0, "status": "ok"},
        {"model": "b", "level": "model", "doc_index": -1, "perplexity": 10.0, "entropy": 2.0, "confidence": 0.3,
         "vocab_share_70": 0.04, "vocab_share_90": 0.25, "n_docs": 2, "n_tokens": 100, "status": "ok"},
        {"model": "a", "level": "model", "doc_index": -1, "perplexity": 12.0, "entropy": 1.5, "confidence": 0.4,
         "vocab_share_70": 0.03, "vocab_share_90": 0.2, "n_docs": 2, "n_tokens": 100, "status": "ok"},
    ]  # fmt: skip
    table = entropy_table(pd.DataFrame(rows))
    assert list(table.index) == ["b", "a"]  # order of appearance, model rows only
    assert table.loc["b", "perplexity"] == 10.0 and table.loc["a", "entropy"] == 1.5
    assert table["n_docs"].dtype.kind == "i"
