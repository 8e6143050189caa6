"""Report helpers: a PNG of S against n per map, and the generalisation table."""

import pandas as pd

from tasks.sensitivity.report import generalisation_table, plot_sensitivity


def test_plot_sensitivity_writes_png(tmp_path):
    rows = [{"map": m, "dataset": ds, "d": 32, "n": n, "L": 1, "S": s / n**0.5 if m == "rf" else s, "rep": r,
             "status": "ok"}
            for m in ("rf", "raf") for ds in ("synthetic", "upstream") for n in (5, 10, 20)
            for r, s in enumerate((1.0, 1.2))]
    rows.append({"map": "rf", "n": 5, "S": None, "status": "failed"})
    path = plot_sensitivity(pd.DataFrame(rows), tmp_path / "plots" / "s.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_generalisation_table():
    df = pd.DataFrame([
        {"map": "raf", "training": "total", "optim": "loss", "n": 5, "d": 16, "N": 40, "t0": 0.5, "t1": 1.0,
         "D0": 0.2, "D1": -1.0, "y": 1.0},
        {"map": "raf", "training": "total", "optim": "loss", "n": 5, "d": 16, "N": 40, "t0": 0.3, "t1": -1.0,
         "D0": 0.1, "D1": -0.5, "y": -1.0},
        {"map": "rf", "training": "total", "optim": "loss", "n": 5, "d": 16, "N": 40, "t0": 0.1, "t1": 1.0,
         "D0": 0.0, "D1": 0.4, "y": 1.0},
    ])
    table = generalisation_table(df).set_index("map")
    assert table.loc["raf", "runs"] == 2 and table.loc["raf", "success"] == 0.5
    assert table.loc["raf", "D1_times_y"] == -0.25 and table.loc["rf", "success"] == 0.0


def test_report_hooks_are_registered(tmp_path):
    from orchestrator.report import report_hooks

    hooks = report_hooks()
    assert hooks["sensitivity.word_sensitivity"].endswith(":report_word_sensitivity")
    from tasks.sensitivity.report import report_word_sensitivity

    df = pd.DataFrame([{"map": "raf", "dataset": "synthetic", "d": 8, "n": n, "L": 1, "S": 1.0} for n in (5, 10)])
    path, table, ratios = report_word_sensitivity(df, tmp_path)
    assert path.exists() and list(table["S_mean"]) == [1.0, 1.0] and list(ratios["ratio"]) == [1.0]
