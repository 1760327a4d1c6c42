"""`auxsurgery demo` end to end at smoke size: every stage runs and every report is written."""
import json
from dataclasses import replace

from auxsurgery.studies.demo import COLUMNS, DemoConfig, run_demo, summary_markdown


def test_demo_smoke_writes_summary_and_both_reports(tmp_path):
    config = replace(DemoConfig.smoke(), train_size=256, eval_size=16)
    rows = run_demo(tmp_path, config)
    assert [(r["model"], r["rule"]) for r in rows] == [
        ("undefended small_cnn", "its own output"), ("Aux Blocks", "vote"), ("Aux Blocks", "score"),
        ("Aux Blocks", "public"), ("Aux Blocks", "private")]
    for row in rows:
        assert all(0.0 <= row[c] <= 100.0 for c in COLUMNS)
        # The worst case is over a superset of attacks: never above any single attack's accuracy.
        assert row["strong worst case"] <= min(row["clean"], row["adaptive PGD"]) + 1e-9
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["n"] == 16 and summary["rows"] == rows
    for model in ("defended", "undefended"):
        assert (tmp_path / model / "report.md").is_file() and (tmp_path / model / "results.json").is_file()
    assert (tmp_path / "defended" / "model.safetensors").is_file()
    assert "| Aux Blocks | vote |" in (tmp_path / "summary.md").read_text()


def test_summary_markdown_has_one_line_per_row():
    rows = [{"model": "m", "rule": "vote", **{c: 50.0 for c in COLUMNS}}]
    text = summary_markdown(rows, 8 / 255, 10)
    assert "eps = 8/255" in text and "| m | vote | 50.0 | 50.0 | 50.0 | 50.0 |" in text
