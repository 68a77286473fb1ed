"""EmoBench: known-answer models on the real data, the official EU rule (emotion AND cause), categories, resume."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from personafuse.evaluate.emobench import EmoBench, score_emobench
from personafuse.evaluate.scripted import ScriptedModel
from test_eval_support import DATA, gold_chooser, letter_chooser, needs_data

pytestmark = needs_data


def _rows(subset: str, lang: str = "en") -> list[dict]:
    lines = (DATA / "emobench" / f"{subset}.jsonl").read_text(encoding="utf-8").splitlines()
    return [r for r in map(json.loads, lines) if r["language"] == lang]


@pytest.fixture(scope="module")
def full():
    return EmoBench.load(DATA / "emobench")


def test_loads_200_items_per_part_and_records_the_file_hashes(full):
    assert Counter(i.subset for i in full.items) == {"EU": 200, "EA": 200}
    assert [f.path.rsplit("/", 1)[-1] for f in full.files] == ["EU.jsonl", "EA.jsonl"]
    assert all(len(f.sha256) == 64 for f in full.files)


def test_a_model_that_always_picks_the_gold_option_scores_100(full):
    questions = [q for item in full.items for q in item.questions]
    result = full.run(gold_chooser(questions))
    assert result.metrics["mean"] == result.metrics["eu"] == result.metrics["ea"] == 1.0
    assert set(result.details["ea_by_category"].values()) == {1.0}
    assert result.counts == {"ea": 200, "eu": 200, "answers": 600, "parsed": 600}


def test_a_model_that_always_picks_a_scores_the_datasets_a_rate(full):
    ea = _rows("EA")
    eu = _rows("EU")
    ea_rate = sum(r["choices"].index(r["label"]) == 0 for r in ea) / len(ea)
    emotion_rate = sum(r["emotion_choices"].index(r["emotion_label"]) == 0 for r in eu) / len(eu)
    cause_rate = sum(r["cause_choices"].index(r["cause_label"]) == 0 for r in eu) / len(eu)
    both_rate = sum(
        r["emotion_choices"].index(r["emotion_label"]) == 0 and r["cause_choices"].index(r["cause_label"]) == 0
        for r in eu
    ) / len(eu)
    metrics = full.run(letter_chooser("A")).metrics
    assert metrics["ea"] == pytest.approx(ea_rate) and metrics["eu_emotion"] == pytest.approx(emotion_rate)
    assert metrics["eu_cause"] == pytest.approx(cause_rate) and metrics["eu"] == pytest.approx(both_rate)
    assert metrics["mean"] == pytest.approx((both_rate + ea_rate) / 2)


def test_generate_then_parse_reports_the_parse_rate():
    task = EmoBench.load(DATA, limit=10, subsets="EA", scoring="generate")
    replies = iter(["B", "I am not sure", "(B)", '{"answer": "B"}'] * 3)
    result = task.run(ScriptedModel(reply=lambda conv: next(replies)))
    assert result.metrics["parse_rate"] == pytest.approx(7 / 10)  # the 2nd, 6th and 10th replies name nothing
    rows = [r for r in _rows("EA") if f"EA-{r['qid']}" in {i.key for i in task.items}]
    b_right = [r["choices"].index(r["label"]) == 1 for r in rows]
    parsed = [i % 4 != 1 for i in range(10)]
    assert result.metrics["ea"] == pytest.approx(sum(b and p for b, p in zip(b_right, parsed)) / 10)


def test_chinese_items_use_chinese_prompts():
    task = EmoBench.load(DATA / "emobench", limit=2, lang="zh", subsets="EU")
    assert "## 场景" in task.items[0].questions[0].messages[-1]["content"]
    assert task.run(letter_chooser("A")).counts["eu"] == 2


def test_same_seed_same_items_and_scores_other_seed_other_items():
    a, b = EmoBench.load(DATA, limit=15, seed=7), EmoBench.load(DATA, limit=15, seed=7)
    assert [i.key for i in a.items] == [i.key for i in b.items]
    assert a.run(letter_chooser("B")).metrics == b.run(letter_chooser("B")).metrics
    assert [i.key for i in EmoBench.load(DATA, limit=15, seed=8).items] != [i.key for i in a.items]


def test_resume_from_a_partial_file_gives_the_full_runs_score(tmp_path):
    task = EmoBench.load(DATA, limit=12, subsets="EA", batch_items=4)
    records = tmp_path / "r.jsonl"
    model = letter_chooser("C")
    full = task.run(model, records=records)
    lines = records.read_text().splitlines()
    records.write_text("\n".join(lines[:5]) + "\n")  # the header and 4 finished items survive
    again = letter_chooser("C")
    resumed = task.run(again, records=records)
    assert resumed.metrics == full.metrics and again.calls["loglikelihood"] == 8 * 4  # 8 items x 4 options


def test_score_emobench_by_hand():
    rows = [
        {"subset": "EU", "category": "c1", "subcategory": "s", "gold": [0, 1], "pred": [0, 1]},  # both right
        {"subset": "EU", "category": "c1", "subcategory": "s", "gold": [0, 1], "pred": [0, 2]},  # cause wrong
        {"subset": "EU", "category": "c2", "subcategory": "s", "gold": [2, 0], "pred": [None, 0]},  # unparsed
        {"subset": "EA", "category": "k", "subcategory": "Action", "gold": [3], "pred": [3]},
    ]
    metrics, counts, details = score_emobench(rows)
    assert metrics["eu"] == pytest.approx(1 / 3) and metrics["eu_emotion"] == pytest.approx(2 / 3)
    assert metrics["eu_cause"] == pytest.approx(2 / 3) and metrics["ea"] == 1.0
    assert metrics["mean"] == pytest.approx((1 / 3 + 1) / 2) and metrics["parse_rate"] == pytest.approx(6 / 7)
    assert details["eu_by_category"] == {"c1": 0.5, "c2": 0.0} and counts["parsed"] == 6
