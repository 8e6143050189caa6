"""Golden test of the report layer: the paper's GPT-J table (Table 4) from the original's summary rows."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from tasks.editing import data, report

try:
    GPTJ = Path(data.data_dir()) / "original_results" / "gptj_table4"
except FileNotFoundError:
    GPTJ = None
needs_rows = pytest.mark.skipif(GPTJ is None or not GPTJ.is_dir(), reason="original_results not present")

# Paper Table 4 (initial | 1e-3 full, LoRA, ensemble | 1e-4 ... | 1e-5 ...), as printed
PAPER = {
    "country": [42.8, 9.2, 10.9, 11.2, 3.2, 11.1, 6.4, -0.1, 3.5, 4.2],
    "company": [13.6, 11.6, 16.0, 5.1, 1.9, 16.6, 1.0, 0.1, 0.0, 2.0],
    "stereoset": [68.9, 2.2, 0.5, 9.1, 0.4, 0.5, 4.0, 0.1, 0.0, 1.9],
    "verb": [54.5, 24.2, 31.7, 18.7, 6.1, 6.2, 18.1, -0.1, 2.0, 11.9],
    "gender": [13.6, 22.1, 5.6, 6.1, 2.4, 2.3, 5.0, 0.2, 0.3, 4.7],
    "temporal": [47.8, -0.3, -0.0, -0.7, -0.4, -0.3, -0.6, -0.4, 0.4, 0.0],
    "average": [40.2, 11.5, 10.8, 8.3, 2.3, 6.1, 5.6, -0.0, 1.0, 4.1],
}


@needs_rows
def test_gptj_table_reproduced_exactly():
    table = report.league_table(report.original_gptj_summary(GPTJ), methods=("full", "lora", "ensemble"))
    assert list(table.index) == list(PAPER)
    assert list(table.columns) == ["initial"] + [f"{e:g} {m}" for e in (1e-3, 1e-4, 1e-5)
                                                 for m in ("full", "lora", "ensemble")]
    rounded = table.round(1)
    for task, expected in PAPER.items():
        assert rounded.loc[task].tolist() == expected, (task, rounded.loc[task].tolist())
    assert table.loc["average", "1e-05 full"] < 0  # printed "-0.0"
    text = report.format_league_table(table)
    assert "40.2" in text and "average" in text


def test_league_table_from_replicate_rows():
    rows = pd.DataFrame([
        {"task": "country", "method": "senses", "league": 1e-3, "success": 0.5, "success_before": 0.1},
        {"task": "country", "method": "senses", "league": 1e-3, "success": 0.3, "success_before": 0.1},
        {"task": "gender", "method": "senses", "league": 1e-3, "success": 0.2, "success_before": 0.2},
    ])
    table = report.league_table(rows, leagues=(1e-3,))
    assert table.loc["country", "0.001 senses"] == pytest.approx(30.0)
    assert table.loc["average", "initial"] == pytest.approx(15.0)
    assert table.loc["average", "0.001 senses"] == pytest.approx(15.0)
