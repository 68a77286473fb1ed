"""The report: tables per task, deltas vs the base run, the not-comparable flag, and the written files."""

from __future__ import annotations

import pytest

from personafuse.errors import UserError
from personafuse.evaluate.report import build_tables, fmt_delta, render_markdown, write_report
from personafuse.evaluate.task import TaskResult


def _result(task: str, mode: str, metrics: dict, seed: int = 0, details: dict | None = None) -> TaskResult:
    return TaskResult(task, "v2" if task == "eqbench" else "1", next(iter(metrics)), metrics, {"items": 3},
                      details or {}, {"limit": 3, "seed": seed}, [{"path": "d", "sha256": "ab"}],
                      {"name": "ckpt", "mode": mode}, wall_s=1.5)  # fmt: skip


def test_deltas_are_against_the_base_mode_run_whatever_the_order():
    runs = [
        _result("emobench", "routed", {"mean": 0.5, "ea": 0.6}),
        _result("emobench", "base", {"mean": 0.4, "ea": 0.7}),
    ]
    (table,) = build_tables(runs)
    assert table.labels == ["ckpt [routed]", "ckpt [base]"] and table.base == 1
    assert table.delta(0, "mean") == pytest.approx(0.1) and table.delta(0, "ea") == pytest.approx(-0.1)
    assert table.delta(1, "mean") is None and table.comparable
    markdown = render_markdown([table])
    assert "| ckpt [routed] | 0.500 (+0.100) | 0.600 (−0.100) | 1.5 |" in markdown
    assert "| ckpt [base] (base) | 0.400 | 0.700 | 1.5 |" in markdown


def test_runs_on_different_items_are_flagged_and_base_can_be_chosen():
    runs = [_result("gsm8k", "base", {"accuracy": 0.2}), _result("gsm8k", "routed", {"accuracy": 0.3}, seed=1)]
    (table,) = build_tables(runs, base_label="ckpt [routed]")
    assert not table.comparable and table.base == 1
    assert "Not comparable" in render_markdown([table])
    with pytest.raises(
        UserError, match=r"--base 'nope' is not a run of task gsm8k; its runs: ckpt \[base\], ckpt \[routed\]"
    ):
        build_tables(runs, base_label="nope")


def test_personality_runs_are_labelled_by_their_probe():
    runs = [
        _result("personality", "routed", {"separation_mean": 0.2}),
        _result("personality", "routed", {"separation_mean": 0.1}),
    ]
    runs[0].config["probe"], runs[1].config["probe"] = "experts", "prompts"
    (table,) = build_tables(runs)
    assert table.labels == ["ckpt [probe experts]", "ckpt [probe prompts]"]


def test_fmt_delta():
    assert fmt_delta(0.1234) == "+0.123" and fmt_delta(-12.345) == "−12.35" and fmt_delta(None) == ""


def test_write_report_writes_markdown_html_and_pngs(tmp_path):
    scores = {"model": {"O": 3.0, "C": 3.5, "E": 2.0, "A": 4.0, "N": 2.5}}
    paths = []
    for i, (task, mode, metrics) in enumerate([
        ("eqbench", "base", {"score": 40.0, "parse_rate": 0.9}),
        ("eqbench", "routed", {"score": 45.5, "parse_rate": 0.95}),
        ("personality", "routed", {"separation_mean": 1.2}),
    ]):  # fmt: skip
        details = {"trait_scores": scores} if task == "personality" else None
        paths.append(_result(task, mode, metrics, details=details).save(tmp_path / f"r{i}.json"))
    written = write_report(paths, tmp_path / "report")
    assert set(written) == {"markdown", "html", "headlines", "traits"}
    assert all(p.is_file() and p.stat().st_size > 0 for p in written.values())
    assert written["headlines"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    markdown = written["markdown"].read_text()
    assert "## eqbench (v2)" in markdown and "45.50 (+5.500)" in markdown and "![headlines](headlines.png)" in markdown
    assert "<h2>eqbench (v2)</h2>" in written["html"].read_text()
    with pytest.raises(UserError, match="give at least one result JSON"):
        write_report([], tmp_path / "empty")
