"""`personafuse eval` end to end on a tiny random HF model: result + records files, resume, report, errors."""

from __future__ import annotations

import json

import pytest

from test_eval_support import DATA, cli, needs_data, save_tiny_model


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("models") / "tiny-llama")


@needs_data
def test_emobench_on_a_tiny_model_writes_result_and_records_and_resumes(monkeypatch, capsys, tmp_path, tiny_dir):
    out = tmp_path / "emo.json"
    args = ["eval", "emobench", "--model", str(tiny_dir), "--data", str(DATA), "--limit", "2", "--seed", "3",
            "--out", str(out), "--json", "--batch-size", "4"]  # fmt: skip
    code, stdout, stderr = cli(monkeypatch, capsys, *args)
    assert code == 0, stderr
    result = json.loads(stdout)
    assert json.loads(out.read_text()) == result
    assert result["task"] == "emobench" and result["counts"]["eu"] == 2 and result["counts"]["ea"] == 2
    assert 0.0 <= result["metrics"]["mean"] <= 1.0 and result["metrics"]["parse_rate"] == 1.0
    assert result["model"]["name"] == "tiny-llama" and result["model"]["mode"] == "base"
    assert len(result["model"]["chat_template_sha256"]) == 64 and result["versions"]["transformers"]
    assert {f["path"].rsplit("/", 1)[-1] for f in result["data_files"]} == {"EU.jsonl", "EA.jsonl"}
    records = tmp_path / "emo.records.jsonl"
    lines = records.read_text().splitlines()
    assert len(lines) == 5 and json.loads(lines[0])["header"]["task"] == "emobench"
    # same command again: everything is already in the records file; identical scores
    code, stdout, _ = cli(monkeypatch, capsys, *args)
    assert code == 0 and json.loads(stdout)["metrics"] == result["metrics"]
    assert records.read_text().splitlines() == lines


@needs_data
def test_gsm8k_and_report(monkeypatch, capsys, tmp_path, tiny_dir):
    out = tmp_path / "gsm.json"
    code, stdout, stderr = cli(monkeypatch, capsys, "eval", "gsm8k", "--model", str(tiny_dir), "--data",
                               str(DATA / "gsm8k"), "--limit", "2", "--max-new-tokens", "4", "--out", str(out))  # fmt: skip
    assert code == 0, stderr
    assert "gsm8k · tiny-llama [base]" in stdout and "accuracy" in stdout and out.is_file()
    code, stdout, stderr = cli(monkeypatch, capsys, "eval", "report", str(out), "--out", str(tmp_path / "rep"))
    assert code == 0, stderr
    assert (tmp_path / "rep" / "report.md").is_file() and (tmp_path / "rep" / "headlines.png").is_file()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["eval", "emobenchh", "--model", "x"], "error: unknown eval task 'emobenchh'; use one of: counseling, customer_service, emobench"),
        (["eval", "emobench", "--model", "x"], "error: task emobench needs --data PATH: a folder holding EU.jsonl"),
        (["eval", "eqbench", "--model", "x", "--data", "/nonexistent"],
         "error: --data /nonexistent does not exist; task eqbench needs a folder holding eq_bench_v2_questions_171.json"),
        (["eval", "emobench", "--model", "x", "--data", ".", "--limit", "ten"],
         "error: --limit must be a positive whole number (or omitted for the full set), got 'ten'"),
        (["eval", "emobench", "--model", "x", "--data", ".", "--limit", "0"], "error: --limit must be a positive whole number"),
    ],
)  # fmt: skip
def test_user_errors_are_one_line_with_exit_code_2(monkeypatch, capsys, args, message):
    code, _, stderr = cli(monkeypatch, capsys, *args)
    assert code == 2 and message in stderr and len(stderr.strip().splitlines()) == 1, stderr


@needs_data
def test_model_errors_come_after_the_data_checks(monkeypatch, capsys, tmp_path):
    code, _, stderr = cli(monkeypatch, capsys, "eval", "emobench", "--model", str(tmp_path / "none"), "--data",
                          str(DATA), "--limit", "1", "--out", str(tmp_path / "x.json"))  # fmt: skip
    assert code == 2 and "does not exist" in stderr and len(stderr.strip().splitlines()) == 1
    code, _, stderr = cli(monkeypatch, capsys, "eval", "emobench", "--model", "openai:http://127.0.0.1:9/v1#m",
                          "--data", str(DATA), "--limit", "1", "--mode", "pole:A+")  # fmt: skip
    assert code == 2 and "--mode pole:A+ needs a PersonaFuse checkpoint" in stderr


@needs_data
@pytest.mark.parametrize(
    ("task", "extra"),
    [
        ("eqbench", ["--limit", "1", "--max-new-tokens", "4", "--no-revise"]),
        ("personality", ["--limit", "1", "--probe", "prompts", "--inventory", "bfi44"]),
        ("mmlu", ["--limit", "2", "--subjects", "anatomy,virology"]),
        ("safety", ["--limit", "1", "--max-new-tokens", "4"]),
    ],
)
def test_every_task_runs_end_to_end_on_the_tiny_model(monkeypatch, capsys, tmp_path, tiny_dir, task, extra):
    out = tmp_path / f"{task}.json"
    code, stdout, stderr = cli(monkeypatch, capsys, "eval", task, "--model", str(tiny_dir), "--data", str(DATA),
                               "--out", str(out), "--json", *extra)  # fmt: skip
    assert code == 0, stderr
    result = json.loads(stdout)
    assert result["task"] == task and result["metrics"][result["headline"]] is not None
    assert result["data_files"] and all(len(f["sha256"]) == 64 for f in result["data_files"])
    assert (tmp_path / f"{task}.records.jsonl").is_file()


@needs_data
def test_judge_end_to_end_with_the_tiny_model_as_judge(monkeypatch, capsys, tmp_path, tiny_dir):
    for name, tokens in (("a", "3"), ("b", "6")):
        code, _, stderr = cli(monkeypatch, capsys, "eval", "gsm8k", "--model", str(tiny_dir), "--data", str(DATA),
                              "--limit", "2", "--max-new-tokens", tokens, "--out", str(tmp_path / f"{name}.json"))  # fmt: skip
        assert code == 0, stderr
    code, stdout, stderr = cli(monkeypatch, capsys, "eval", "judge", "--model", str(tiny_dir), "--data",
                               str(tmp_path / "a.json"), "--against", str(tmp_path / "b.json"), "--max-new-tokens",
                               "3", "--out", str(tmp_path / "j.json"), "--json")  # fmt: skip
    assert code == 0, stderr
    result = json.loads(stdout)
    assert result["counts"]["items"] == 2 and result["details"]["run_a"] == "tiny-llama [base]"
    assert (
        result["counts"]["wins"] + result["counts"]["losses"] + result["counts"]["ties"] + result["counts"]["invalid"]
        == 2
    )
