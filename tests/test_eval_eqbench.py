"""EQ-Bench v2: the reference scoring rule on hand-computed examples, parsing, and known-answer runs."""

from __future__ import annotations

import json
import math

import pytest

from personafuse.evaluate.eqbench import (
    EQBench,
    aggregate,
    parse_answers,
    scaled_difference,
    score_item,
    strip_revision,
)
from personafuse.evaluate.scripted import ScriptedModel
from test_eval_support import DATA, needs_data

REF = {"emotion1": "Remorseful", "emotion2": "Indifferent", "emotion3": "Affectionate", "emotion4": "Annoyed",
       "emotion1_score": 0, "emotion2_score": "6", "emotion3_score": 0, "emotion4_score": "7"}  # fmt: skip
"""Item 1's reference_answer_fullscale (scores are strings in the file for some emotions)."""


def test_scaled_difference_by_hand():
    assert scaled_difference(0) == 0.0
    assert scaled_difference(4) == pytest.approx(3.25)  # 6.5 / (1 + e^0)
    assert scaled_difference(1) == pytest.approx(6.5 / (1 + math.exp(3.6)))  # = 0.172880
    assert scaled_difference(1) == pytest.approx(0.172880, abs=1e-6)
    assert scaled_difference(5) == pytest.approx(6.5 / (1 + math.exp(-1.2)))  # = 4.995411, the S-curve's end
    assert scaled_difference(6) == 6.0 and scaled_difference(10) == 10.0  # linear above 5


def test_score_item_by_hand():
    exact = {"Remorseful": "0", "Indifferent": "6", "Affectionate": "0", "Annoyed": "7"}
    assert score_item(REF, exact) == pytest.approx(10.0)
    # misses of 1, 0, 2, 6: tally = 0.172880 + 0 + 6.5/(1+e^2.4) + 6 = 0.172880 + 0.540623 + 6 = 6.713503
    answer = {"remorseful": "1", "INDIFFERENT": "6", "Affectionate": "2", "Annoyed": "1"}
    tally = 6.5 / (1 + math.exp(3.6)) + 6.5 / (1 + math.exp(2.4)) + 6
    assert tally == pytest.approx(6.713503, abs=1e-6)
    assert score_item(REF, answer) == pytest.approx(10 - 0.7477 * tally)  # = 4.980314
    assert score_item(REF, answer) == pytest.approx(4.980314, abs=1e-6)


def test_score_item_rejects_answers_without_the_four_reference_emotions():
    assert score_item(REF, {"Remorseful": "1", "Indifferent": "6", "Affectionate": "2"}) is None
    assert score_item(REF, {"Remorseful": "1", "Indifferent": "6", "Affectionate": "2", "Angry": "3"}) is None


def test_parse_answers_splits_first_pass_and_revised_and_strips_markdown():
    reply = ("**First pass scores:**\nRemorseful: 2\nIndifferent: 3\nAffectionate: 0\nAnnoyed: 5\n\n"
             "Critique: he is clearly annoyed.\n\n## Revised scores:\nRemorseful: 0\nIndifferent: 6\n"
             "Affectionate: 0\nAnnoyed: 7\n")  # fmt: skip
    first, revised = parse_answers(reply, revise=True)
    assert first == {"Remorseful": "2", "Indifferent": "3", "Affectionate": "0", "Annoyed": "5"}
    assert revised == {"Remorseful": "0", "Indifferent": "6", "Affectionate": "0", "Annoyed": "7"}
    assert parse_answers("Remorseful: 1\nAnnoyed: 9", revise=False) == ({"Remorseful": "1", "Annoyed": "9"}, {})
    assert parse_answers("no scores here", revise=True) == ({}, {})


def test_aggregate_follows_the_reference_choice_between_first_pass_and_revised():
    # first pass mean 6 -> 60; revised mean 7 over as many items -> 70: revised is reported
    got = aggregate([6.0, 6.0], [7.0, 7.0])
    assert (got["score"], got["first_pass"], got["revised"], got["parseable"]) == (70.0, 60.0, 70.0, 2)
    # revised higher but only 1 of 2 parsed (< 95% of first pass's 2): first pass is reported
    assert aggregate([6.0, 6.0], [9.0, None])["score"] == 60.0
    # revised lower: first pass
    assert aggregate([8.0, None], [5.0, 5.0])["score"] == 80.0
    assert aggregate([None, None], [None, None])["score"] == 0.0


@needs_data
def test_strip_revision_removes_the_critique_part():
    prompt = json.loads((DATA / "eq_bench" / "eq_bench_v2_questions_171.json").read_text())["1"]["prompt"]
    stripped = strip_revision(prompt)
    assert "Critique" not in stripped and "Revised scores" not in stripped and stripped.endswith("Your answer:\n")
    assert "Remorseful: <score>" in stripped


@needs_data
def test_a_model_that_replies_the_reference_scores_100_and_v2_is_stated():
    task = EQBench.load(DATA, limit=12, seed=1)
    refs = {i.prompt: i.reference for i in task.items}

    def reply(conv):
        ref = refs[conv[-1]["content"]]
        lines = "\n".join(f"{ref[f'emotion{i}']}: {ref[f'emotion{i}_score']}" for i in range(1, 5))
        return f"First pass scores:\n{lines}\n\nCritique: fine.\n\nRevised scores:\n{lines}\n"

    result = task.run(ScriptedModel(reply=reply))
    assert result.metrics["score"] == pytest.approx(100.0) and result.counts["parseable"] == 12
    assert result.task_version == "v2" and result.details["benchmark"] == "EQ-Bench v2"


@needs_data
def test_unparseable_replies_score_zero_with_zero_parseable():
    result = EQBench.load(DATA, limit=3).run(ScriptedModel(reply=lambda c: "I feel nothing."))
    assert result.metrics["score"] == 0.0 and result.counts["parseable"] == 0 and result.metrics["parse_rate"] == 0.0
    assert len(EQBench.load(DATA).items) == 171
