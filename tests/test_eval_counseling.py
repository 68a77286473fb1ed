"""The counseling task and the reply scoring it shares: hand-derived statistics, the judge rubric parser, the
reward model's held-out split, known-answer runs with scripted models, resume, reward-model training and caching,
and the CLI's one-line errors."""

from __future__ import annotations

import csv
import json

import pytest

from personafuse.errors import UserError
from personafuse.evaluate import ScriptedModel, get_task
from personafuse.evaluate.counseling import CSV_NAME, held_out_questions
from personafuse.evaluate.reply_scoring import (
    COUNSELING_RUBRIC,
    mean_ci,
    parse_rubric,
    resolve_reward_model,
    rubric_messages,
    summarise_replies,
    t_quantile_975,
)
from personafuse.evaluate.task import MissingDataError
from personafuse.train.counsel_pairs import CounselPair, load_counsel_pairs
from reply_scoring_support import make_scorer, save_reward_model
from test_eval_support import DATA, cli, needs_data

CSV = DATA / "counsel_chat" / CSV_NAME


@pytest.fixture(scope="module")
def reward_dir(tmp_path_factory):
    return save_reward_model(tmp_path_factory.mktemp("rm") / "reward_model")


# ---------------------------------------------------------------------------------------------------- pure maths
def test_mean_ci_by_hand():
    # mean 2, s = 1, half-width t(0.975, 2) / sqrt(3) = 4.302653 / 1.732051 = 2.484138
    mean, low, high = mean_ci([1.0, 2.0, 3.0])
    assert mean == 2.0 and low == pytest.approx(-0.484138, abs=1e-6) and high == pytest.approx(4.484138, abs=1e-6)
    assert mean_ci([5.0]) == (5.0, None, None)
    assert mean_ci([4.0, 4.0]) == (4.0, 4.0, 4.0)
    with pytest.raises(ValueError, match="at least one value"):
        mean_ci([])


def test_t_quantiles_match_the_table_and_the_expansion():
    assert t_quantile_975(1) == 12.706204736 and t_quantile_975(9) == 2.262157163
    assert t_quantile_975(40) == pytest.approx(2.021075390, abs=1e-7)  # scipy.stats.t.ppf(0.975, 40)
    assert t_quantile_975(100) == pytest.approx(1.983971519, abs=1e-7)
    assert t_quantile_975(31) < t_quantile_975(30)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Good.\nEmpathy: 8\nHelpfulness: 6\nSafety: 10", {"empathy": 8.0, "helpfulness": 6.0, "safety": 10.0}),
        ("**Empathy:** 7/10\n- Helpfulness: 5 out of 10\n## Safety: 9", {"empathy": 7.0, "helpfulness": 5.0, "safety": 9.0}),
        ("Empathy: 2\nHelpfulness: 2\nSafety: 2\nOn reflection:\nEmpathy: 4\nHelpfulness: 3\nSafety: 5",
         {"empathy": 4.0, "helpfulness": 3.0, "safety": 5.0}),
        ("empathy = 6.5\nhelpfulness=7\nsafety: 8", {"empathy": 6.5, "helpfulness": 7.0, "safety": 8.0}),
        ("Empathy: 8\nHelpfulness: 6", None),  # a criterion missing
        ("Empathy: 11\nHelpfulness: 6\nSafety: 9", None),  # out of range
        ("Empathy: 0\nHelpfulness: 6\nSafety: 9", None),
        ("The empathy is 8 and helpfulness 6, safety 9.", None),  # not in the asked format
    ],
)  # fmt: skip
def test_parse_rubric(text, expected):
    assert parse_rubric(text, list(COUNSELING_RUBRIC.criteria)) == expected


def test_rubric_messages_name_every_criterion_and_the_answer_lines():
    system, user = rubric_messages(COUNSELING_RUBRIC, "I feel alone.", "That sounds hard.")
    assert system["role"] == "system" and user["role"] == "user"
    assert "I feel alone." in user["content"] and "That sounds hard." in user["content"]
    assert user["content"].endswith("Empathy: <1-10>\nHelpfulness: <1-10>\nSafety: <1-10>")


def test_summarise_replies_by_hand():
    rows = [
        {"reward": 1.0, "persona_consistency": 0.5, "reply_words": 10, "reply_chars": 50,
         "judge": {"empathy": 8.0, "helpfulness": 6.0, "safety": 10.0}, "judge_text": "..."},
        {"reward": 3.0, "persona_consistency": -0.5, "reply_words": 20, "reply_chars": 70, "judge": None,
         "judge_text": "unparsable"},
    ]  # fmt: skip
    metrics, counts = summarise_replies(rows, list(COUNSELING_RUBRIC.criteria))
    # reward: mean 2, s = sqrt(2), half-width 12.706205 * sqrt(2) / sqrt(2) = 12.706205
    assert metrics["reward"] == 2.0 and metrics["reward_ci_high"] == pytest.approx(14.706205, abs=1e-6)
    assert metrics["persona_consistency"] == 0.0 and metrics["reply_words"] == 15.0 and metrics["reply_chars"] == 60.0
    assert metrics["judge_parse_rate"] == 0.5 and metrics["judge"] == 8.0 and metrics["judge_empathy"] == 8.0
    assert "judge_ci_low" not in metrics  # one parsed judgement: no spread
    assert counts == {"items": 2, "judged": 2, "judge_parsed": 1}
    assert "judge_parse_rate" not in summarise_replies([{k: v for k, v in rows[0].items() if "judge" not in k}],
                                                       ["empathy"])[0]  # fmt: skip


def test_held_out_questions_keep_each_group_once_with_its_top_voted_answer():
    pairs = [CounselPair("7", "Q7", "best", "mid", 5, 2), CounselPair("7", "Q7", "mid", "low", 2, 0),
             CounselPair("3", "Q3", "a", "b", 1, 0)]  # fmt: skip
    questions = held_out_questions(pairs)
    assert [(q.key, q.question, q.best_answer, q.best_upvotes, q.answers) for q in questions] == [
        ("counsel-7", "Q7", "best", 5, 3), ("counsel-3", "Q3", "a", 1, 2)]  # fmt: skip


# ---------------------------------------------------------------------------------------------------- the real CSV
@needs_data
def test_items_are_exactly_the_reward_models_test_questions(reward_dir):
    task = get_task("counseling").load(DATA, reward_model=str(reward_dir))
    pairs = load_counsel_pairs(CSV)
    assert {q.group for q in task.items} == {p.group for p in pairs["test"]}
    assert not {q.group for q in task.items} & {p.group for split in ("train", "val") for p in pairs[split]}
    assert task.split == {
        "val_percent": 15,
        "test_percent": 15,
        "test_questions": 22,
        "test_pairs": 180,
        "reward_model_test_accuracy": None,
    }
    names = [f["path"].rsplit("/", 1)[-1] for f in [vars(f) for f in task.files]]
    assert names == [CSV_NAME, "model.safetensors", "router-minilm-l6.safetensors"]
    limited = get_task("counseling").load(CSV, limit=5, seed=1, reward_model=str(reward_dir))
    again = get_task("counseling").load(CSV, limit=5, seed=1, reward_model=str(reward_dir))
    assert [q.key for q in limited.items] == [q.key for q in again.items] and len(limited.items) == 5


@needs_data
def test_a_reward_model_trained_on_another_split_is_refused(tmp_path):
    folder = save_reward_model(tmp_path / "rm", metrics={"fit": {"pairs": 10}, "test": {"pairs": 3}})
    with pytest.raises(UserError, match=r"was trained on another CounselChat split \(10 fitted / 3 test pairs there"):
        get_task("counseling").load(DATA, reward_model=str(folder))


@needs_data
def test_known_answers_determinism_and_resume(tmp_path, reward_dir):
    task = get_task("counseling").load(DATA, limit=2, reward_model=str(reward_dir))
    task.scorer = make_scorer(reward_dir)
    best = {q.question: q.best_answer for q in task.items}
    copier = ScriptedModel(reply=lambda conv: best[conv[-1]["content"]], name="copier")
    records = tmp_path / "c.records.jsonl"
    result = task.run(copier, records=records)
    # copying the top-voted therapist answer ties it under the same reward model on every question
    assert (
        result.metrics["beats_best_human"] == 0.5 and result.metrics["reward"] == result.metrics["best_human_reward"]
    )
    assert result.counts == {"items": 2} and result.headline == "reward"
    rows = [json.loads(line) for line in records.read_text().splitlines()[1:]]
    assert [r["reply"] for r in rows] == [best[r["prompt"]] for r in rows] and all(-1 <= r["persona_consistency"] <= 1
                                                                                  for r in rows)  # fmt: skip
    # resume: a fresh task over the same records asks the model nothing and scores the same
    resumed = get_task("counseling").load(DATA, limit=2, reward_model=str(reward_dir))
    resumed.scorer = task.scorer
    again = ScriptedModel(reply=lambda conv: "never asked", name="copier")
    assert resumed.run(again, records=records).metrics == result.metrics and again.calls["generate"] == 0
    # determinism: a second run in memory gives identical scores
    assert task.run(copier).metrics == result.metrics


@needs_data
def test_a_scripted_judge_gives_rubric_means_and_parse_rate(reward_dir):
    def judge_reply(conv):
        return "Kind.\nEmpathy: 8\nHelpfulness: 6\nSafety: 10" if "[Reply]\nI'm sorry" in conv[-1]["content"] else "?"

    judge = ScriptedModel(reply=judge_reply, name="judge")
    task = get_task("counseling").load(DATA, limit=2, reward_model=str(reward_dir))
    task.scorer = make_scorer(reward_dir, judge=judge)
    keys = [task.items[0].question]
    model = ScriptedModel(reply=lambda conv: "I'm sorry." if conv[-1]["content"] in keys else "Okay.")
    result = task.run(model)
    assert result.metrics["judge_parse_rate"] == 0.5 and result.metrics["judge"] == 8.0
    assert (result.metrics["judge_empathy"], result.metrics["judge_helpfulness"], result.metrics["judge_safety"]) == (
        8.0, 6.0, 10.0)  # fmt: skip
    assert result.counts == {"items": 2, "judged": 2, "judge_parsed": 1} and judge.calls["generate"] == 2


# ---------------------------------------------------------------------------------------------------- reward model
def _write_tiny_csv(path, questions=30):
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, ["questionID", "questionTitle", "questionText", "answerText", "upvotes"])
        writer.writeheader()
        for q in range(questions):
            for a, votes in enumerate((2, 1, 0)):
                writer.writerow({"questionID": q, "questionTitle": f"Question {q}", "questionText": f"Worry {q}?",
                                 "answerText": f"Answer {a} to {q}.", "upvotes": votes})  # fmt: skip
    return path


def test_without_a_reward_model_one_is_trained_the_documented_way_once_and_cached(tmp_path, monkeypatch):
    import personafuse.train.reward_model as reward_model

    calls = []

    def fake_train(pairs, config, encoder, output_dir, embedding_cache):  # training itself: test_reward_model.py
        calls.append((pairs, config, output_dir, embedding_cache))
        save_reward_model(output_dir)

    monkeypatch.setattr(reward_model, "train_reward_model", fake_train)
    monkeypatch.setenv("PERSONAFUSE_HOME", str(tmp_path / "home"))
    csv_path = _write_tiny_csv(tmp_path / "tiny.csv")
    folder = resolve_reward_model(None, csv_path, True, "counseling")
    assert folder.parent == tmp_path / "home" / "reward_models" and folder.name.startswith("counselchat-")
    assert (folder / "model.safetensors").is_file() and len(calls) == 1
    pairs, config, output_dir, cache = calls[0]
    assert config == reward_model.RewardModelConfig() and output_dir == folder
    assert cache == folder.parent / f"{folder.name}-embeddings.pt"
    assert pairs == load_counsel_pairs(csv_path, 15, 15) and sum(len(v) for v in pairs.values()) == 90
    assert resolve_reward_model(None, csv_path, True, "counseling") == folder and len(calls) == 1  # cached
    with pytest.raises(MissingDataError, match="needs --reward-model DIR .* when --no-train-reward-model is set"):
        resolve_reward_model(None, csv_path, False, "counseling")


# ---------------------------------------------------------------------------------------------------- CLI errors
@needs_data
@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "error: task counseling needs --data PATH: a folder holding 20200325_counsel_chat.csv"),
        (["--data", "/nonexistent"], "error: --data /nonexistent does not exist; task counseling needs a folder"),
        (["--data", str(CSV), "--reward-model", "/nonexistent"],
         "error: --reward-model /nonexistent is not a reward-model folder (needs config.json and model.safetensors)"),
        (["--data", str(DATA), "--no-train-reward-model"],
         "error: task counseling needs --reward-model DIR (a trained CounselChat reward model) when "
         "--no-train-reward-model is set"),
        (["--data", str(DATA), "--judge-url", "http://127.0.0.1:9/v1"],
         "error: --judge-url and --judge-model go together"),
        (["--data", str(DATA), "--max-new-tokens", "0"], "error: --max-new-tokens must be a positive whole number, got 0"),
        (["--data", str(DATA), "--persona-router", "/nonexistent", "--reward-model", "REWARD"],
         "error: --persona-router /nonexistent is not a PersonaFuse checkpoint folder"),
    ],
)  # fmt: skip
def test_cli_errors_are_one_line(monkeypatch, capsys, reward_dir, extra, message):
    extra = [str(reward_dir) if e == "REWARD" else e for e in extra]
    code, _, stderr = cli(monkeypatch, capsys, "eval", "counseling", "--model", "never-loaded", *extra)
    assert code == 2 and message in stderr and len(stderr.strip().splitlines()) == 1, stderr
