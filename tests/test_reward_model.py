"""The CounselChat reward model: pair building, features, training on synthetic preferences, save/load."""

from __future__ import annotations

import csv
import random

import pytest
import torch

from personafuse.errors import ConfigError, ModelLoadError, UserError
from personafuse.train.counsel_pairs import (
    CounselPair,
    grouped_bootstrap_ci,
    length_baseline_accuracy,
    load_counsel_pairs,
)
from personafuse.train.reward_model import (
    RewardHead,
    RewardModel,
    RewardModelConfig,
    answer_length_feature,
    reward_features,
    train_reward_model,
)

COLUMNS = ["", "questionID", "questionTitle", "questionText", "answerText", "upvotes", "split"]


def write_csv(path, rows):
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(COLUMNS)
        for index, row in enumerate(rows):
            writer.writerow([index, *row, "train"])
    return path


def test_pairs_rank_by_upvotes_skip_ties_and_merge_reposted_questions(tmp_path):
    path = write_csv(tmp_path / "cc.csv", [
        (1, "Can I cope?", "I feel low.", "Answer A", 3),
        (1, "Can I cope?", "I feel low.", "Answer B", 1),
        (1, "Can I cope?", "I feel low.", "Answer C", 1),      # tie with B: no B-C pair
        (2, "can i cope", "Other text", "Answer D\nmultiline", 0),  # same title -> same question group
        (2, "can i cope", "Other text", "answer a", 0),         # duplicate of A (normalised): dropped, A keeps 3
        (3, "Unrelated", "Something else.", "Only answer", 5),
    ])  # fmt: skip
    pairs = load_counsel_pairs(path)
    everything = [p for split in pairs.values() for p in split]
    got = sorted((p.chosen, p.rejected, p.chosen_upvotes, p.rejected_upvotes) for p in everything)
    assert got == sorted([
        ("Answer A", "Answer B", 3, 1), ("Answer A", "Answer C", 3, 1), ("Answer A", "Answer D\nmultiline", 3, 0),
        ("Answer B", "Answer D\nmultiline", 1, 0), ("Answer C", "Answer D\nmultiline", 1, 0),
    ])  # fmt: skip
    assert {p.group for p in everything} == {"1"}
    assert everything[0].question == "Can I cope?\nI feel low."


def test_missing_column_and_file_are_one_line_errors(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("questionID,answerText\n1,x\n")
    with pytest.raises(UserError, match=r"lacks the column\(s\) \['questionTitle', 'questionText', 'upvotes'\]"):
        load_counsel_pairs(bad)
    with pytest.raises(FileNotFoundError, match="set data.counsel_chat"):
        load_counsel_pairs(tmp_path / "missing.csv")


def test_real_counsel_chat_splits_by_question(shared_data):
    path = shared_data / "counsel_chat" / "20200325_counsel_chat.csv"
    if not path.is_file():
        pytest.skip("CounselChat CSV not present")
    pairs = load_counsel_pairs(path)
    groups = {split: {p.group for p in items} for split, items in pairs.items()}
    assert not groups["train"] & groups["val"] and not groups["train"] & groups["test"]
    assert not groups["val"] & groups["test"]
    assert all(p.chosen_upvotes > p.rejected_upvotes for items in pairs.values() for p in items)
    assert len(pairs["train"]) > 1000 and len(pairs["test"]) > 50


def test_length_baseline_and_bootstrap_by_hand():
    pairs = [CounselPair("q", "q?", "long answer", "short"), CounselPair("q", "q?", "a", "bb"),
             CounselPair("r", "r?", "same", "same")]  # fmt: skip
    assert length_baseline_accuracy(pairs) == pytest.approx((1 + 0 + 0.5) / 3)
    assert grouped_bootstrap_ci([1, 1, 1], ["a", "b", "c"], samples=50) == (1.0, 1.0)
    low, high = grouped_bootstrap_ci([1, 0, 1, 0], ["a", "a", "b", "b"], samples=50)
    assert low == high == 0.5  # every resample pools half-right questions


def test_features_by_hand():
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    a = torch.tensor([[0.6, 0.8], [0.6, 0.8]])
    lengths = answer_length_feature(["one two three", ""])
    out = reward_features(q, a, lengths)
    expected_len = torch.log1p(torch.tensor(3.0)).item() / 6
    torch.testing.assert_close(out, torch.tensor([[0.6, 0.8, 0.6, expected_len], [0.6, 0.8, 0.8, 0.0]]))
    assert reward_features(q, a, None).shape == (2, 3)


def test_config_collects_problems():
    with pytest.raises(
        ConfigError, match=r"reward_model.epochs must be a positive integer, got 0.*hidden must be >= 0"
    ):
        RewardModelConfig(epochs=0, hidden=-1)
    with pytest.raises(ConfigError, match="cv_folds must be 0"):
        RewardModelConfig(cv_folds=1)


def _synthetic_pairs(seed: int = 0) -> dict[str, list[CounselPair]]:
    """Answers that validate and suggest a next step beat dismissive ones; the dismissive ones are longer."""
    rng = random.Random(seed)
    topics = ["sleep", "work stress", "a breakup", "my exams", "my sister", "panic at night", "moving city",
              "losing my job"]  # fmt: skip
    good = ["That sounds really hard; it makes sense you feel this way. Could we try one small step together?",
            "I hear how much this hurts, and your feelings are valid. A counselor can help you work through it.",
            "Thank you for sharing this. It is understandable, and talking it through with someone you trust helps."]  # fmt: skip
    bad = ["Everyone has problems like this all the time and honestly you just need to stop complaining and get over "
           "it already, there is nothing special here and nobody wants to keep hearing about it every single day.",
           "Just ignore it and it will go away eventually, it is not a big deal at all and worrying about it is a "
           "waste of your time and everyone else's time too, so move on and do something else instead."]  # fmt: skip
    out: dict[str, list[CounselPair]] = {"train": [], "val": [], "test": []}
    for index, topic in enumerate(topics):
        split = "test" if index % 4 == 3 else "train"
        question = f"How do I deal with {topic}?"
        for g in good:
            for b in bad:
                out[split].append(CounselPair(f"q{index}", question, f"{g} ({topic})", f"{b} ({topic})", 3, 0))
    rng.shuffle(out["train"])
    return out


@pytest.fixture(scope="module")
def encoder():
    from personafuse.models import load_encoder

    return load_encoder("minilm-l6")  # the real MiniLM (a local wheel)


def test_training_learns_a_synthetic_preference_above_chance(tmp_path, encoder):
    pairs = _synthetic_pairs()
    assert length_baseline_accuracy(pairs["test"]) == 0.0  # length alone gets every test pair wrong
    config = RewardModelConfig(epochs=60, cv_folds=2, l2_grid=[0.001, 0.01])
    result = train_reward_model(pairs, config, encoder=encoder, output_dir=tmp_path / "rm",
                                embedding_cache=tmp_path / "emb.pt")  # fmt: skip
    test = result.metrics["test"]
    assert test["accuracy"] >= 0.9 > 0.5 == result.metrics["chance"]
    assert test["length_baseline"] == 0.0 and test["pairs"] == 12 and test["questions"] == 2
    assert result.metrics["selection"]["l2"] in (0.001, 0.01)
    assert (tmp_path / "emb.pt").is_file()

    loaded = RewardModel.load(tmp_path / "rm", encoder=encoder)
    questions = [p.question for p in pairs["test"]]
    chosen = [p.chosen for p in pairs["test"]]
    torch.testing.assert_close(loaded.score(questions, chosen), result.model.score(questions, chosen))
    assert loaded.metrics["test"]["accuracy"] == test["accuracy"]


def test_load_refuses_other_folders(tmp_path):
    with pytest.raises(ModelLoadError, match="is not a reward-model folder"):
        RewardModel.load(tmp_path)


def test_head_is_linear_by_default():
    head = RewardHead(5, 0)
    assert [type(m).__name__ for m in head.net] == ["Linear"]
    assert head(torch.zeros(3, 5)).shape == (3,)
