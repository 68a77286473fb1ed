"""Pairwise judging: Wilson intervals by hand, verdict parsing, both-order combination, and a judged run."""

from __future__ import annotations

import pytest

from personafuse.evaluate.judge import Judge, combine, parse_verdict, swap, win_rate
from personafuse.evaluate.scripted import ScriptedModel
from personafuse.evaluate.stats import wilson_interval
from personafuse.evaluate.task import MissingDataError, TaskResult


def test_wilson_interval_by_hand():
    # p = 1/2, n = 10, z = 1.96: centre 0.5, half-width 1.96/1.38416 * sqrt(0.025 + 0.009604) = 0.263410
    assert wilson_interval(5, 10, z=1.96) == pytest.approx((0.236590, 0.763410), abs=1e-6)
    # p = 0: the upper bound z²/n / (1 + z²/n) = 0.38416 / 1.38416 = 0.277540
    assert wilson_interval(0, 10, z=1.96) == pytest.approx((0.0, 0.277540), abs=1e-6)
    assert wilson_interval(10, 10, z=1.96) == pytest.approx((0.722460, 1.0), abs=1e-6)
    low, high = wilson_interval(3.5, 7)  # fractional successes (ties count half) are allowed
    assert low < 0.5 < high
    with pytest.raises(ValueError, match="n must be >= 1"):
        wilson_interval(0, 0)


def test_parse_verdict_takes_the_last_bracketed_verdict():
    assert parse_verdict("A is warmer. [[A]]") == "A"
    assert parse_verdict("Not [[A]]... on reflection [[B]]") == "B"
    assert parse_verdict("Equal. [[C]]") == "tie"
    assert parse_verdict("I prefer A") is None
    assert swap("A") == "B" and swap("tie") == "tie" and swap(None) is None


@pytest.mark.parametrize(
    ("first", "second", "outcome"),
    [("A", "A", "win"), ("B", "B", "loss"), ("A", "B", "tie"), ("tie", "A", "tie"), ("A", None, "win"),
     (None, "B", "loss"), (None, None, "invalid"), ("tie", "tie", "tie")],
)  # fmt: skip
def test_combine_both_orders(first, second, outcome):
    assert combine(first, second) == outcome


def test_win_rate_by_hand():
    got = win_rate(["win"] * 6 + ["loss"] * 2 + ["tie"] * 2 + ["invalid"])
    assert (got["wins"], got["losses"], got["ties"], got["invalid"]) == (6, 2, 2, 1)
    assert got["win_rate"] == 0.7 and got["decisive_win_rate"] == 0.75
    assert (got["ci_low"], got["ci_high"]) == pytest.approx(wilson_interval(7, 10), abs=1e-6)


def _run(tmp_path, name: str, replies: dict[str, str]) -> str:
    """A fake generation run on disk: result JSON + records, as `personafuse eval` writes them."""
    records = tmp_path / f"{name}.records.jsonl"
    lines = ['{"header": {"task": "fake"}}'] + [
        f'{{"key": "{k}", "prompt": "prompt {k}", "reply": "{v}"}}' for k, v in replies.items()
    ]
    records.write_text("\n".join(lines) + "\n")
    result = TaskResult("fake", "1", "x", {"x": 1.0}, {}, {}, {}, [], {"name": name, "mode": "base"},
                        records=str(records))  # fmt: skip
    return str(result.save(tmp_path / f"{name}.json"))


def test_a_judge_that_prefers_longer_replies_gives_the_longer_run_every_win(tmp_path):
    a = _run(tmp_path, "long", {str(i): "a long and careful reply " * 3 for i in range(6)})
    b = _run(tmp_path, "short", {str(i): "short" for i in range(8)})

    def judge(conv):
        text = conv[-1]["content"]
        first = text.split("[Reply A]\n")[1].split("\n\n[Reply B]")[0]
        second = text.split("[Reply B]\n")[1].split("\n\nWhich reply")[0]
        return "[[A]]" if len(first) > len(second) else "[[B]]"

    task = Judge.load(a, against=b)
    result = task.run(ScriptedModel(reply=judge, name="len-judge"))
    assert result.counts == {"wins": 6, "losses": 0, "ties": 0, "invalid": 0, "items": 6}  # 6 shared keys
    assert result.metrics["win_rate"] == 1.0 and result.metrics["order_consistency"] == 1.0
    assert result.metrics["mean_words_a"] == 15.0 and result.metrics["mean_words_b"] == 1.0
    assert result.details["run_a"] == "long [base]" and len(task.files) == 2


def test_a_judge_with_pure_position_bias_produces_only_ties(tmp_path):
    a = _run(tmp_path, "a", {"1": "x", "2": "y"})
    b = _run(tmp_path, "b", {"1": "u", "2": "v"})
    result = Judge.load(a, against=b).run(ScriptedModel(reply=lambda c: "Clearly [[A]]"))
    assert result.counts["ties"] == 2 and result.metrics["win_rate"] == 0.5
    assert result.metrics["order_consistency"] == 0.0


def test_judge_needs_two_runs_with_replies(tmp_path):
    a = _run(tmp_path, "a", {"1": "x"})
    with pytest.raises(Exception, match=r"task judge needs --against RUN"):
        Judge.load(a)
    with pytest.raises(MissingDataError, match=r"--against .*missing.json does not exist"):
        Judge.load(a, against=str(tmp_path / "missing.json"))
    other = _run(tmp_path, "other", {"9": "z"})
    with pytest.raises(Exception, match="share no item"):
        Judge.load(a, against=other)
