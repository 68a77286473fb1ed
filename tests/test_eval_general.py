"""GSM8K final-number extraction and exact match; MMLU known-answer models, subjects and few-shot turns."""

from __future__ import annotations

import csv

import pytest

from personafuse.evaluate.general import GSM8K, MMLU, extract_final_number, gsm8k_gold, is_correct
from personafuse.evaluate.scripted import ScriptedModel
from personafuse.evaluate.task import MissingDataError
from test_eval_support import DATA, gold_chooser, letter_chooser, needs_data


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("16 - 3 - 4 = 9 eggs, 9 * 2 = 18.\nThe answer is 18.", "18"),
        ("The answer is $1,234.50", "$1,234.50"),
        ("First 5, then 7.\n#### 12", "12"),
        ("The answer is 3. Oh wait, 4 + 1 = 5. The answer is 5", "5"),
        ("It costs -4 dollars and then 10 more, so 6", "6"),
        ("no numbers at all", None),
    ],
)
def test_extract_final_number(reply, expected):
    assert extract_final_number(reply) == expected


def test_numeric_equality_and_gold_parsing():
    assert gsm8k_gold("so 2+1=<<2+1=3>>3 bolts\n#### 1,003") == "1003"
    assert is_correct("$1,003.00", "1003") and is_correct("18", "18") and not is_correct("18.5", "18")
    assert not is_correct(None, "3") and not is_correct("abc", "3")


@needs_data
def test_gsm8k_model_that_replies_the_gold_answer_scores_100_and_a_constant_scores_its_rate():
    task = GSM8K.load(DATA / "gsm8k", limit=30, seed=0)
    gold = {i.question: i.gold for i in task.items}
    result = task.run(
        ScriptedModel(reply=lambda c: f"Reasoning...\nThe answer is {gold[c[-1]['content'].split(chr(10))[0]]}.")
    )
    assert result.metrics == {"accuracy": 1.0, "parse_rate": 1.0}
    rate = sum(g == "18" for g in gold.values()) / 30
    assert task.run(ScriptedModel(reply=lambda c: "The answer is 18")).metrics["accuracy"] == pytest.approx(
        rate, abs=1e-6
    )


@needs_data
def test_gsm8k_fewshot_turns_come_from_train_without_calculator_annotations():
    task = GSM8K.load(DATA, limit=2, fewshot=2)
    assert [m["role"] for m in task.shots] == ["user", "assistant", "user", "assistant"]
    assert "<<" not in task.shots[1]["content"] and task.shots[1]["content"].endswith("The answer is 72.")
    assert [f.path.rsplit("/", 1)[-1] for f in task.files] == ["test.jsonl", "train.jsonl"]


def _mmlu_rows(subject: str) -> list[list[str]]:
    with (DATA / "mmlu" / "test" / f"{subject}_test.csv").open(encoding="utf-8", newline="") as handle:
        return [r for r in csv.reader(handle) if len(r) == 6]


@needs_data
def test_mmlu_gold_model_scores_100_and_always_a_scores_the_a_rate():
    subjects = "high_school_psychology,moral_scenarios"
    task = MMLU.load(DATA, subjects=subjects)
    rows = _mmlu_rows("high_school_psychology") + _mmlu_rows("moral_scenarios")
    assert len(task.items) == len(rows)
    assert task.run(gold_chooser([i.question for i in task.items])).metrics["accuracy"] == 1.0
    a_rate = sum(r[5].strip() == "A" for r in rows) / len(rows)
    metrics = task.run(letter_chooser("A")).metrics
    assert metrics["accuracy"] == pytest.approx(a_rate, abs=1e-6)


@needs_data
def test_mmlu_subset_fewshot_and_errors():
    task = MMLU.load(DATA, limit=5, seed=3, subjects="anatomy", fewshot=2)
    first = task.items[0].question.messages
    assert [m["role"] for m in first] == ["user", "assistant", "user", "assistant", "user"]
    assert first[1]["content"] in "ABCD" and "about anatomy" in first[-1]["content"]
    assert len(task.files) == 2 and [i.key for i in task.items] == [
        i.key for i in MMLU.load(DATA, limit=5, seed=3, subjects="anatomy").items
    ]
    with pytest.raises(MissingDataError, match=r"--subjects \['astrology'\] not in"):
        MMLU.load(DATA, subjects="anatomy,astrology")
    with pytest.raises(MissingDataError, match=r"has no test/\*_test.csv"):
        MMLU.load(DATA / "gsm8k")


@needs_data
def test_mmlu_endpoint_models_are_scored_by_parsing():
    task = MMLU.load(DATA, limit=4, subjects="anatomy")
    result = task.run(ScriptedModel(reply=lambda c: "The answer is B"))
    b_rate = sum(i.question.gold == 1 for i in task.items) / 4
    assert result.metrics["accuracy"] == pytest.approx(b_rate, abs=1e-6) and result.metrics["parse_rate"] == 1.0
