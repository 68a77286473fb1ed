"""CLI end to end: real subprocesses for exit codes and one-line errors, the tiny model for chat."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from personafuse.traits import POLES, TRAITS

CLI = [sys.executable, "-m", "personafuse.cli"]


def run(*args: str, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}
    return subprocess.run([*CLI, *args], capture_output=True, text=True, env=env, timeout=300, **kwargs)


def test_help_lists_the_commands():
    result = run("--help")
    assert result.returncode == 0
    for command in ("route", "chat", "info"):
        assert command in result.stdout


def test_route_text_json_gives_activations_and_gates():
    result = run("route", "--json", "My grandmother died last night and I can't stop crying")
    assert result.returncode == 0, result.stderr
    routing = json.loads(result.stdout)
    assert list(routing["activations"]) == list(TRAITS)
    assert list(routing["gates"]) == list(POLES)
    assert sum(routing["gates"].values()) == pytest.approx(1.0, abs=1e-4)


def test_route_input_file_reports_bad_lines_by_number(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_text('{"id": "a", "text": "we won the cup!"}\n{oops\n{"text": "server is down"}\n')
    failed = run("route", "--input", str(path), "--json")
    assert failed.returncode == 2
    assert failed.stderr.strip().count("\n") == 0, "one line"
    assert f"{path}:2" in failed.stderr and "--skip-bad-lines" in failed.stderr
    assert "Traceback" not in failed.stderr
    ok = run("route", "--input", str(path), "--json", "--skip-bad-lines")
    assert ok.returncode == 0
    rows = [json.loads(line) for line in ok.stdout.splitlines()]
    assert [r["id"] for r in rows] == ["a", 3]
    assert f"{path}:2" in ok.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["route", " "], "TEXT is empty"),
        (["route"], "give either TEXT or --input"),
        (["route", "--input", "/nonexistent.jsonl"], "no such JSONL file: /nonexistent.jsonl"),
        (["chat", "-p", "hi", "--persona", "A+=2"], "gates sum to 2.0000 > 1"),
        (["chat", "-p", "hi", "--persona", "Q+=1"], r"unknown pole\(s\) \['Q\+'\]"),
        (["chat", "-p", "hi", "--model", "./no-such-model"], "base model path './no-such-model' does not exist"),
        (["chat", "-p", "  "], "--prompt is empty"),
    ],
)
def test_bad_input_gets_one_line_and_exit_code_2(args, message):
    import re

    result = run(*args)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert re.search(message, result.stderr), result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_chat_one_shot_json_on_a_tiny_model(tiny_pf, tmp_path):
    tiny_pf.save_pretrained(tmp_path / "ckpt")
    result = run("chat", "--model", str(tmp_path / "ckpt"), "-p", "my cat died", "--persona", "A+=0.7,N-=0.3",
                 "--max-new-tokens", "5", "--json", "--compare")  # fmt: skip
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["persona"]["gates"]["A+"] == pytest.approx(0.7)
    assert isinstance(out["reply"], str) and isinstance(out["base_reply"], str)


def test_info_json():
    result = run("info", "--json")
    assert result.returncode == 0
    data = json.loads(result.stdout)
    assert data["personafuse"] and "torch" in data["packages"]


def test_bad_option_values_and_unknown_commands_are_one_line_exit_2():
    bad = run("route", "--batch-size", "abc", "x")
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [bad.stderr.strip()]
    assert "--batch-size" in bad.stderr and "personafuse route --help" in bad.stderr
    unknown = run("nosuch")
    assert unknown.returncode == 2 and "No such command 'nosuch'" in unknown.stderr
