"""The customer_service task: the closer-to-ideal rule by hand, reading the seed corpus and review files, known
answers with scripted models (copy the ideal: 100%, copy the rejected: 0%), determinism, resume, a scripted
judge, the CLI end to end on a tiny model, and its one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from personafuse.errors import UserError
from personafuse.evaluate import ScriptedModel, get_task
from personafuse.evaluate.customer_service import REVIEW_PROMPT, closer_to_ideal, score_service
from personafuse.evaluate.reply_scoring import SERVICE_RUBRIC
from personafuse.evaluate.task import MissingDataError
from reply_scoring_support import hash_router, make_scorer, save_reward_model
from scripted_openai_server import ScriptedServer, serve
from test_eval_support import cli, save_tiny_model

SEED = Path(__file__).resolve().parents[1] / "data" / "seed"
TEST_IDS = ["customer_service-006", "customer_service-029", "customer_service-036", "customer_service-042"]


@pytest.fixture(scope="module")
def reward_dir(tmp_path_factory):
    return save_reward_model(tmp_path_factory.mktemp("rm") / "reward_model")


def _write(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


REVIEWS = [
    {"id": "r1", "review": "Cold soup, rude waiter.", "ideal": "We're sorry about the soup; we'd like to make it right.",
     "rejected": "Soup is supposed to be cold, learn some cuisine.",
     "activation": {"O": 0, "C": 0.4, "E": 0, "A": 0.6, "N": -0.5}},
    {"review": "Lovely staff, will come back!"},
]  # fmt: skip


# ---------------------------------------------------------------------------------------------------- pure rules
@pytest.mark.parametrize(
    ("ideal", "rejected", "expected"),
    [(0.9, 0.2, 1.0), (0.2, 0.9, 0.0), (0.5, 0.5, 0.5), (0.7000001, 0.7, 0.5), (-0.1, -0.3, 1.0)],
)
def test_closer_to_ideal_by_hand(ideal, rejected, expected):
    assert closer_to_ideal(ideal, rejected) == expected


def test_score_service_by_hand():
    base = {"reward": 0.0, "persona_consistency": 0.0, "reply_words": 1, "reply_chars": 5}
    rows = [
        {**base, "activation_source": "label", "similarity_ideal": 0.9, "similarity_rejected": 0.1, "closer_to_ideal": 1.0},
        {**base, "activation_source": "routed", "similarity_ideal": 0.3, "similarity_rejected": 0.5, "closer_to_ideal": 0.0},
        {**base, "activation_source": "routed"},  # no references: left out of the similarity metrics
    ]  # fmt: skip
    metrics, counts, _ = score_service(rows)
    # closer 1/2 -> Wilson (z = 1.96): (0.0945, 0.9055); margins 0.8 and -0.2: mean 0.3, s = 0.7071, t(1) = 12.7062
    assert metrics["closer_to_ideal"] == 0.5 and metrics["closer_to_ideal_ci_low"] == pytest.approx(0.0945, abs=1e-4)
    assert metrics["similarity_margin"] == 0.3 and metrics["similarity_margin_ci_high"] == pytest.approx(
        6.653102, abs=1e-5
    )
    assert metrics["similarity_ideal"] == 0.6 and metrics["similarity_rejected"] == 0.3
    assert counts == {"items": 3, "with_reference": 2, "labelled": 1}
    assert "closer_to_ideal" not in score_service(rows[2:])[0]


# ---------------------------------------------------------------------------------------------------- reading data
def test_seed_corpus_filters_domain_and_split(reward_dir):
    task = get_task("customer_service").load(SEED, reward_model=str(reward_dir))
    assert [i.key for i in task.items] == TEST_IDS
    assert all(i.source == "record" and i.ideal and i.rejected and i.activation for i in task.items)
    assert [Path(f.path).name for f in task.files] == ["customer_service.jsonl", "model.safetensors",
                                                       "router-minilm-l6.safetensors"]  # fmt: skip
    assert len(get_task("customer_service").load(SEED, reward_model=str(reward_dir), split="all").items) == 42
    every = get_task("customer_service").load(SEED, reward_model=str(reward_dir), domain="all")
    test_records = [json.loads(line) for f in sorted(SEED.glob("*.jsonl")) for line in f.read_text().splitlines()]
    assert len(every.items) == sum(r["split"] == "test" for r in test_records) and len(every.files) > 3


def test_review_lines_and_records_in_one_file(tmp_path, reward_dir):
    record = json.loads((SEED / "customer_service.jsonl").read_text().splitlines()[0]) | {"split": "train"}
    path = _write(tmp_path / "mixed.jsonl", [*REVIEWS, record])
    task = get_task("customer_service").load(path, reward_model=str(reward_dir), split="all")
    assert [i.key for i in task.items] == ["r1", "mixed-2", "customer_service-001"]
    first, second, third = task.items
    assert first.messages == ({"role": "user", "content": REVIEW_PROMPT.format(review="Cold soup, rude waiter.")},)
    assert first.activation == (0.0, 0.4, 0.0, 0.6, -0.5) and first.ideal and first.rejected
    assert second.ideal is None and second.activation is None and third.source == "record"
    assert [i.key for i in get_task("customer_service").load(path, reward_model=str(reward_dir)).items] == [
        "r1",
        "mixed-2",
    ]


@pytest.mark.parametrize(
    ("rows", "error", "message"),
    [
        (["{not json"], UserError, r"bad.jsonl:1: .*; fix that line of --data"),
        ([{"text": "hi"}], UserError, r'bad.jsonl:1: neither a situation record \("messages"\) nor a review line'),
        ([{"review": "ok", "activation": {"O": 1}}], UserError, r"bad.jsonl:1: activation must map every trait O, C"),
        ([{"messages": [{"role": "assistant", "content": "hi"}]}], UserError, "ending with a user turn"),
        ([{"id": "x", "review": "a"}, {"id": "x", "review": "b"}], UserError, r"the id\(s\) \['x'\] occur more than once"),
        ([{"review": "a", "split": "train"}], MissingDataError, "no item of domain 'customer_service' in split 'test'"),
    ],
)  # fmt: skip
def test_bad_files_are_named_errors(tmp_path, reward_dir, rows, error, message):
    with pytest.raises(error, match=message):
        get_task("customer_service").load(_write(tmp_path / "bad.jsonl", rows), reward_model=str(reward_dir))


# ---------------------------------------------------------------------------------------------------- known answers
def _copiers(task):
    by_prompt = {i.messages[-1]["content"]: i for i in task.items}
    ideal = ScriptedModel(reply=lambda conv: by_prompt[conv[-1]["content"]].ideal, name="ideal")
    rejected = ScriptedModel(reply=lambda conv: by_prompt[conv[-1]["content"]].rejected, name="rejected")
    return ideal, rejected


@pytest.mark.parametrize("real", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_copying_the_ideal_scores_100_and_the_rejected_0(reward_dir, real):
    task = get_task("customer_service").load(SEED, reward_model=str(reward_dir))
    task.scorer = make_scorer(reward_dir, rubric=SERVICE_RUBRIC, real=real)  # real: the shipped MiniLM router
    ideal, rejected = _copiers(task)
    good, bad = task.run(ideal), task.run(rejected)
    assert good.metrics["closer_to_ideal"] == 1.0 and good.metrics["similarity_ideal"] == 1.0
    assert bad.metrics["closer_to_ideal"] == 0.0 and bad.metrics["similarity_rejected"] == 1.0
    assert bad.metrics["similarity_margin"] == -good.metrics["similarity_margin"]
    assert good.counts == {"items": 4, "with_reference": 4, "labelled": 4} and good.headline == "closer_to_ideal"
    if real:  # the labelled activation is what the ideal reply expresses and what the rejected one contradicts
        assert good.metrics["persona_consistency"] > 0.3 > -0.3 > bad.metrics["persona_consistency"]


def test_determinism_resume_and_a_scripted_judge(tmp_path, reward_dir):
    asked: list = []
    judge = ScriptedModel(reply=lambda conv: asked.append(conv[-1]["content"]) or "Composed.\nProfessionalism: 9\n"
                          "Empathy: 7\nResolution: 8", name="judge")  # fmt: skip
    task = get_task("customer_service").load(SEED, reward_model=str(reward_dir))
    task.scorer = make_scorer(reward_dir, rubric=SERVICE_RUBRIC, judge=judge)
    ideal, _ = _copiers(task)
    records = tmp_path / "cs.records.jsonl"
    good = task.run(ideal, records=records)
    assert good.metrics["closer_to_ideal"] == 1.0 and good.metrics["judge"] == 8.0
    assert good.metrics["judge_parse_rate"] == 1.0 and good.metrics["judge_professionalism"] == 9.0
    assert good.counts == {"items": 4, "judged": 4, "judge_parsed": 4, "with_reference": 4, "labelled": 4}
    assert asked[0].endswith("Professionalism: <1-10>\nEmpathy: <1-10>\nResolution: <1-10>")
    assert "judge_text" in json.loads(records.read_text().splitlines()[1])
    resumed = get_task("customer_service").load(SEED, reward_model=str(reward_dir))
    resumed.scorer = task.scorer
    again = ScriptedModel(reply=lambda conv: "never asked", name="ideal")
    assert resumed.run(again, records=records).metrics == good.metrics and again.calls["generate"] == 0
    assert task.run(ideal).metrics == good.metrics  # deterministic
    task.scorer.judge = None
    assert "judge_parse_rate" not in task.run(ideal).metrics


# ---------------------------------------------------------------------------------------------------- CLI
def test_cli_end_to_end_on_a_tiny_model_with_an_endpoint_judge(monkeypatch, capsys, tmp_path, reward_dir):
    import personafuse.loading

    monkeypatch.setattr(personafuse.loading, "load_router", lambda spec, device=None: hash_router())  # no MiniLM
    server = ScriptedServer(model=lambda body: "Fine.\nProfessionalism: 9\nEmpathy: 7\nResolution: 8"
                            if "Cold soup" in body["messages"][-1]["content"] else "No scores today.")  # fmt: skip
    model = save_tiny_model(tmp_path / "tiny-llama")
    data = _write(tmp_path / "reviews.jsonl", REVIEWS)
    out = tmp_path / "cs.json"
    with serve(server.create_app()) as url:
        args = ["eval", "customer_service", "--model", str(model), "--data", str(data), "--reward-model",
                str(reward_dir), "--max-new-tokens", "4", "--out", str(out), "--json", "--judge-url", url,
                "--judge-model", "judge-1"]  # fmt: skip
        code, stdout, stderr = cli(monkeypatch, capsys, *args)
        assert code == 0, stderr
        result = json.loads(stdout)
        assert result == json.loads(out.read_text()) and result["task"] == "customer_service"
        assert result["counts"] == {"items": 2, "judged": 2, "judge_parsed": 1, "with_reference": 1, "labelled": 1}
        assert result["metrics"]["judge_parse_rate"] == 0.5 and result["metrics"]["judge"] == 8.0
        assert 0.0 <= result["metrics"]["closer_to_ideal"] <= 1.0 and result["config"]["max_new_tokens"] == 4
        assert [r["model"] for r in server.requests] == ["judge-1", "judge-1"]
        lines = (tmp_path / "cs.records.jsonl").read_text().splitlines()
        assert len(lines) == 3 and {json.loads(line)["key"] for line in lines[1:]} == {"r1", "reviews-2"}
        code, stdout, _ = cli(monkeypatch, capsys, *args)  # resumed: same scores, nothing appended, no judge call
        assert code == 0 and json.loads(stdout)["metrics"] == result["metrics"] and len(server.requests) == 2
        assert len((tmp_path / "cs.records.jsonl").read_text().splitlines()) == 3


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], 'error: task customer_service needs --data PATH: the seed corpus folder (data/seed), a JSONL'),
        (["--data", "/nonexistent"], "error: --data /nonexistent does not exist; task customer_service needs"),
        (["--data", str(SEED)], "error: task customer_service needs --reward-model DIR, or --counsel-chat CSV"),
        (["--data", str(SEED), "--counsel-chat", "/none.csv"], "error: --counsel-chat /none.csv does not exist"),
        (["--data", str(SEED), "--reward-model", "/nonexistent"], "error: --reward-model /nonexistent is not a reward"),
        (["--data", str(SEED), "--split", "dev"], "error: --split must be one of test, val, train, all; got 'dev'"),
        (["--data", str(SEED), "--judge-url", "ftp://x", "--judge-model", "m"],
         "error: --judge-url must start with http:// or https://, got 'ftp://x'"),
    ],
)  # fmt: skip
def test_cli_errors_are_one_line(monkeypatch, capsys, extra, message):
    code, _, stderr = cli(monkeypatch, capsys, "eval", "customer_service", "--model", "never-loaded", *extra)
    assert code == 2 and message in stderr and len(stderr.strip().splitlines()) == 1, stderr
