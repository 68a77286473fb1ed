"""lm-eval-harness in process: the `personafuse` LM wrapper, offline GSM8K / MMLU task folders, `eval lm-eval`."""

from __future__ import annotations

import csv
import json
import re

import pytest
import yaml

pytest.importorskip("lm_eval")

from personafuse.evaluate.lm_eval_model import PersonaFuseLM, first_stop  # noqa: E402
from personafuse.evaluate.models import PLAIN_ROLE  # noqa: E402
from personafuse.evaluate.scripted import ScriptedModel  # noqa: E402
from serve_support import shared_tiny_pf  # noqa: E402
from test_eval_support import DATA, cli, needs_data  # noqa: E402

CONTEXTS = ["Question: how was your day?\nAnswer:", "tell me honestly what you think of my plan.\nAnswer:"]
CONTINUATIONS = [" what a great day", " I think"]


def _requests(kind, args):
    from lm_eval.api.instance import Instance

    return [Instance(request_type=kind, doc={}, arguments=a, idx=i) for i, a in enumerate(args)]


@pytest.fixture(scope="module")
def tiny_hf(tiny_base):
    from personafuse.evaluate.local import HFEvalModel

    return HFEvalModel.from_pretrained(tiny_base, device="cpu", batch_size=4)


# ---------------------------------------------------------------------------------------------------- wrapper
def test_plain_loglikelihood_is_the_raw_text_score_and_the_eval_models_own(tiny_hf):
    import torch

    lm = PersonaFuseLM(tiny_hf)
    got = [ll for ll, _ in lm.loglikelihood(_requests("loglikelihood", list(zip(CONTEXTS, CONTINUATIONS))))]
    own = tiny_hf.loglikelihood([[{"role": PLAIN_ROLE, "content": c}] for c in CONTEXTS], CONTINUATIONS)
    assert got == own
    # independent reference: one forward pass over the raw text (no chat template), lm-eval's token split
    tok, model = tiny_hf.runner.tokenizer, tiny_hf.runner.model
    for context, continuation, score in zip(CONTEXTS, CONTINUATIONS, got):
        ctx = tok(context, add_special_tokens=False)["input_ids"]
        whole = tok(context + continuation, add_special_tokens=False)["input_ids"]
        assert whole[: len(ctx)] == ctx
        with torch.no_grad():
            logprobs = torch.log_softmax(model(torch.tensor([whole])).logits[0, :-1].float(), -1)  # [T-1, V]
        expected = sum(float(logprobs[i - 1, whole[i]]) for i in range(len(ctx), len(whole)))
        assert score == pytest.approx(expected, abs=1e-4)


def test_chat_requests_are_scored_from_their_messages(tiny_hf):
    lm = PersonaFuseLM(tiny_hf)
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": CONTEXTS[0]}]
    rendered = lm.apply_chat_template(messages)
    assert rendered == tiny_hf.runner.render(messages) and rendered.endswith("<|im_start|>assistant\n")
    (got, _), (plain, _) = lm.loglikelihood(
        _requests("loglikelihood", [(rendered, "I think"), (CONTEXTS[0], "I think")])
    )
    assert got == tiny_hf.loglikelihood([messages], ["I think"])[0]
    assert plain != got  # the plain context is not chat-templated
    with pytest.raises(NotImplementedError, match="gen_prefix"):
        lm.apply_chat_template(messages, add_generation_prompt=False)


def test_generate_until_stops_at_the_first_stop_string_and_honours_max_gen_toks(tiny_hf):
    lm = PersonaFuseLM(tiny_hf)
    free = tiny_hf.generate([[{"role": PLAIN_ROLE, "content": CONTEXTS[0]}]], 24)[0]
    assert len(free) > 8
    stop = free[4:7]
    assert free.find(stop) == 4
    args = [(CONTEXTS[0], {"until": [stop, "never-there"], "max_gen_toks": 24, "do_sample": False})]
    assert lm.generate_until(_requests("generate_until", args)) == [free[:4]]
    short = lm.generate_until(_requests("generate_until", [(CONTEXTS[0], {"until": [], "max_gen_toks": 3})]))[0]
    assert short == tiny_hf.generate([[{"role": PLAIN_ROLE, "content": CONTEXTS[0]}]], 3)[0]
    assert free.startswith(short) and len(short) < len(free)
    scripted = PersonaFuseLM(ScriptedModel(reply=lambda conv: "#### 4\nQuestion: next\nAnswer: 5"))
    got = scripted.generate_until(_requests("generate_until", [("Question: 2+2?\nAnswer:", {"until": "Question:"})]))
    assert got == ["#### 4\n"] and first_stop("abc", ["x"]) == "abc"


def test_unsupported_requests_say_what_to_do(tiny_hf):
    lm = PersonaFuseLM(tiny_hf)
    with pytest.raises(NotImplementedError, match="perplexity tasks such as wikitext"):
        lm.loglikelihood_rolling(_requests("loglikelihood_rolling", [("some text",)]))
    with pytest.raises(NotImplementedError, match="empty context"):
        lm.loglikelihood(_requests("loglikelihood", [("", " A")]))


def test_routed_and_base_modes_score_differently_and_routing_reads_the_context(tiny_base):
    from personafuse.evaluate.local import PersonaFuseEvalModel

    pf = shared_tiny_pf(tiny_base)
    requests = _requests("loglikelihood", list(zip(CONTEXTS, CONTINUATIONS)))
    routed = [ll for ll, _ in PersonaFuseLM(PersonaFuseEvalModel(pf, "routed")).loglikelihood(requests)]
    base = [ll for ll, _ in PersonaFuseLM(PersonaFuseEvalModel(pf, "base")).loglikelihood(requests)]
    assert all(abs(r - b) > 1e-4 for r, b in zip(routed, base))
    for context, continuation, score in zip(CONTEXTS, CONTINUATIONS, routed):  # the router saw the lm-eval text
        forced = PersonaFuseEvalModel(pf, "routed").with_persona(pf.route([context])[0])
        plain = [{"role": PLAIN_ROLE, "content": context}]
        assert score == pytest.approx(forced.loglikelihood([plain], [continuation])[0], abs=1e-5)


# ---------------------------------------------------------------------------------------------------- tasks
def test_shipped_tasks_keep_lm_evals_stock_prompts_and_metrics(tmp_path):
    from pathlib import Path

    import lm_eval

    from personafuse.evaluate.lm_eval_tasks import TEMPLATES, mmlu_subjects

    stock = Path(lm_eval.__file__).parent / "tasks"
    ours, theirs = (
        yaml.safe_load((TEMPLATES / "gsm8k.yaml").read_text()),
        yaml.safe_load((stock / "gsm8k" / "gsm8k.yaml").read_text()),
    )
    assert {k: v for k, v in ours.items() if k not in ("dataset_path", "dataset_kwargs")} == {
        k: v for k, v in theirs.items() if k not in ("dataset_path", "dataset_name")
    }
    ours = yaml.safe_load((TEMPLATES / "mmlu" / "_default_template_yaml").read_text())
    theirs = yaml.safe_load((stock / "mmlu" / "default" / "_default_template_yaml").read_text())
    assert {k: v for k, v in ours.items() if k != "dataset_path"} == {
        k: v for k, v in theirs.items() if k != "dataset_path"
    }
    categories = {}
    for path in (stock / "mmlu" / "default").glob("mmlu_*.yaml"):
        config = yaml.safe_load(path.read_text())
        categories[config["dataset_name"]] = config["tag"].removeprefix("mmlu_").removesuffix("_tasks")
    assert mmlu_subjects() == categories and len(categories) == 57


@pytest.mark.parametrize(
    ("tasks", "message"),
    [
        ("gsm8k,mmlu_astrology", "--tasks mmlu_astrology: unknown; use gsm8k, mmlu, mmlu_stem"),
        (" , ", "--tasks is empty; give a comma-separated list of: gsm8k, mmlu"),
    ],
)
def test_unknown_tasks_are_refused_with_the_valid_names(tasks, message):
    from personafuse.evaluate.lm_eval_tasks import UnknownLmEvalTaskError, parse_tasks

    with pytest.raises(UnknownLmEvalTaskError, match=re.escape(message)):
        parse_tasks(tasks)


def _mmlu_rows(subject: str, n: int) -> list[list[str]]:
    with (DATA / "mmlu" / "test" / f"{subject}_test.csv").open(encoding="utf-8", newline="") as handle:
        return [row for row in csv.reader(handle) if len(row) == 6][:n]


def _mmlu_gold_by_prompt(subjects) -> dict[str, str]:
    """Stock lm-eval MMLU prompt text of each question -> gold letter."""
    out = {}
    for subject in subjects:
        for q, a, b, c, d, gold in _mmlu_rows(subject, 10**6):
            out[f"{q.strip()}\nA. {a}\nB. {b}\nC. {c}\nD. {d}\nAnswer:"] = gold.strip()
    return out


@needs_data
def test_known_answers_through_lm_eval_score_one_and_the_a_rate():
    from personafuse.evaluate.lm_eval_run import run_lm_eval

    subjects = ["anatomy", "high_school_psychology", "moral_scenarios"]
    gold = _mmlu_gold_by_prompt(subjects)

    def pick(context, continuation):
        (key,) = [k for k in gold if context[-1]["content"].endswith(k)]
        return 0.0 if continuation == f" {gold[key]}" else -5.0

    tasks = [f"mmlu_{s}" for s in subjects]
    right = run_lm_eval(ScriptedModel(loglik=pick, name="gold"), tasks, DATA, limit=10)
    always_a = run_lm_eval(ScriptedModel(loglik=lambda c, k: 0.0 if k == " A" else -5.0), tasks, DATA, limit=10)
    for subject in subjects:
        letters = [row[5].strip() for row in _mmlu_rows(subject, 10)]
        assert right["results"][f"mmlu_{subject}"]["acc,none"] == 1.0
        assert always_a["results"][f"mmlu_{subject}"]["acc,none"] == pytest.approx(letters.count("A") / 10)
        assert right["n_samples"][f"mmlu_{subject}"]["effective"] == 10
    assert 0 < sum(always_a["results"][t]["acc,none"] for t in tasks) < len(tasks)  # not vacuous

    with (DATA / "gsm8k" / "test.jsonl").open(encoding="utf-8") as handle:
        answers = {json.loads(line)["question"]: json.loads(line)["answer"] for line in handle}

    def solve(conversation):
        question = conversation[-1]["content"].rsplit("Question: ", 1)[1].removesuffix("\nAnswer:")
        return answers[question].split("####")[0] + "#### " + answers[question].split("####")[1].strip()

    maths = run_lm_eval(ScriptedModel(reply=solve), ["gsm8k"], DATA, limit=3, num_fewshot=0)
    wrong = run_lm_eval(ScriptedModel(reply=lambda conv: "#### -1"), ["gsm8k"], DATA, limit=3, num_fewshot=0)
    assert maths["results"]["gsm8k"]["exact_match,strict-match"] == 1.0
    assert wrong["results"]["gsm8k"]["exact_match,strict-match"] == 0.0


# ---------------------------------------------------------------------------------------------------- CLI
@needs_data
@pytest.mark.parametrize(
    ("tasks", "subjects"),
    [("gsm8k,mmlu_anatomy,mmlu_sociology", 2), pytest.param("gsm8k,mmlu", 57, marks=pytest.mark.slow)],
)
def test_cli_runs_gsm8k_and_mmlu_offline_and_records_the_run(monkeypatch, capsys, tmp_path, tiny_base, tasks,
                                                              subjects):  # fmt: skip
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    out = tmp_path / "lm.json"
    args = ["eval", "lm-eval", "--tasks", tasks, "--model", tiny_base, "--data", str(DATA), "--limit", "2",
            "--seed", "3", "--num-fewshot", "1", "--out", str(out)]  # fmt: skip
    code, stdout, stderr = cli(monkeypatch, capsys, *args)
    assert code == 0, stderr
    assert "lm-eval 0.4" in stdout and "exact_match" in stdout and "mmlu_anatomy" in stdout
    result = json.loads(out.read_text())
    assert result["tasks"] == tasks.split(",") and result["limit"] == 2 and result["seed"] == 3
    assert result["lm_eval_version"] == result["versions"]["lm_eval"] and result["model"]["mode"] == "base"
    assert {f["path"].split("shared/data/")[1] for f in result["data_files"]} == {
        "gsm8k/test.jsonl", "gsm8k/train.jsonl", "mmlu/test", "mmlu/dev"}  # fmt: skip
    assert all(len(f["sha256"]) == 64 for f in result["data_files"])
    n = result["n_samples"]
    assert n["gsm8k"]["effective"] == 2 and len([t for t in n if t.startswith("mmlu_")]) == subjects
    assert all(v["effective"] == 2 for t, v in n.items() if t.startswith("mmlu_"))
    assert all(0.0 <= result["results"][t]["acc,none"] <= 1.0 for t in result["results"] if t.startswith("mmlu"))
    assert 0.0 <= result["results"]["gsm8k"]["exact_match,flexible-extract"] <= 1.0
    assert result["n_shot"]["gsm8k"] == 1 and result["n_shot"]["mmlu_anatomy"] == 1
    if subjects == 57:
        assert 0.0 <= result["results"]["mmlu"]["acc,none"] <= 1.0 and n["mmlu_anatomy"]["original"] == 135


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--tasks", "gsm8k,mmlux", "--data", "."], "error: --tasks mmlux: unknown; use gsm8k, mmlu"),
        (
            ["--tasks", "gsm8k", "--data", "/nonexistent"],
            "error: --data /nonexistent does not exist; task gsm8k needs a folder holding test.jsonl",
        ),
        (["--tasks", "mmlu_anatomy", "--data", "/tmp"], "error: --data /tmp has no test/ and dev/ folders"),
        (["--tasks", "gsm8k", "--data", ".", "--limit", "0"], "error: --limit must be a positive whole number"),
        (["--tasks", "gsm8k", "--data", ".", "--mode", "prompt"], "error: --mode prompt puts the persona in a system"),
    ],
)
def test_cli_bad_input_is_one_line(monkeypatch, capsys, tiny_base, args, message):
    code, _, stderr = cli(monkeypatch, capsys, "eval", "lm-eval", "--model", tiny_base, *args)
    assert code == 2 and stderr.startswith(message), stderr
    assert "Traceback" not in stderr and len(stderr.strip().splitlines()) <= 2
