"""`personafuse synthesize`: user errors are one line with exit code 2; Ctrl-C stops cleanly and resumes."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from personafuse.cli import app
from personafuse.cli.errors import run_app
from personafuse.data.jsonl import iter_jsonl
from scripted_openai_server import ScriptedServer, fake_model, serve

PERSONAFUSE = Path(sys.executable).with_name("personafuse")


@pytest.fixture(scope="module")
def scripted():
    server = ScriptedServer()
    with serve(server.create_app()) as url:
        server.url = url
        yield server


def run_cli(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """Run the CLI in-process through the same runner as the installed script; return (exit code, out, err)."""
    monkeypatch.setattr(sys, "argv", ["personafuse", *args])
    with pytest.raises(SystemExit) as info:
        run_app(app)
    captured = capsys.readouterr()
    return info.value.code, captured.out, captured.err


def test_synthesize_json_summary(scripted, tmp_path):
    scripted.reset()
    args = ["synthesize", "--base-url", scripted.url, "--model", "scripted", "--out", str(tmp_path)]
    args += ["--domains", "grief_loss,casual_chat", "--per-domain", "2", "--concurrency", "2", "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["records"] == 4 and summary["items_rejected"] == 0
    assert summary["accepted"]["records"] == 4 and summary["prompt_tokens"] > 0
    ids = {line.value["id"] for line in iter_jsonl(tmp_path / "records.jsonl")}
    assert ids == {"syn-grief_loss-0001", "syn-grief_loss-0002", "syn-casual_chat-0001", "syn-casual_chat-0002"}


def test_synthesize_table_summary(scripted, tmp_path):
    scripted.reset()
    args = ["synthesize", "--base-url", scripted.url, "--model", "scripted", "--out", str(tmp_path)]
    result = CliRunner().invoke(app, [*args, "--domains", "pet_care:looking after pets", "--per-domain", "1"])
    assert result.exit_code == 0, result.output
    assert "1 records in records.jsonl" in result.stdout
    assert json.loads((tmp_path / "situations.jsonl").read_text())["id"] == "syn-pet_care-0001"


def _closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}/v1"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--base-url", "localhost:8000"], r"error: --base-url 'localhost:8000' is not an http\(s\) URL"),
        (["--domains", "grief_loss,nope"], "error: --domains: unknown domain 'nope'; use any of grief_loss"),
        (["--per-domain", "0"], "error: --per-domain must be a whole number >= 1, got 0"),
        (["--per-domain", "-3"], "error: --per-domain must be a whole number >= 1, got -3"),
        (["--base-url", "https://api.openai.com/v1", "--api-key-env", "PF_TEST_NO_SUCH_KEY"], "needs an API key"),
        (["--max-retries", "0"], "error: cannot reach http://127.0.0.1:.* check --base-url"),
    ],
)
def test_user_errors_are_one_line_with_exit_code_2(monkeypatch, capsys, tmp_path, extra, message):
    import re

    monkeypatch.delenv("PF_TEST_NO_SUCH_KEY", raising=False)
    args = ["synthesize", "--base-url", _closed_port_url(), "--model", "m", "--out", str(tmp_path / "out"), *extra]
    code, out, err = run_cli(monkeypatch, capsys, *args)
    assert code == 2
    assert len(err.strip().splitlines()) == 1, err
    assert re.search(message, err), err


def test_non_integer_per_domain_is_a_usage_error(monkeypatch, capsys, tmp_path):
    code, _, err = run_cli(
        monkeypatch,
        capsys,
        "synthesize",
        "--base-url",
        "http://x/v1",
        "--model",
        "m",
        "--out",
        str(tmp_path),
        "--per-domain",
        "abc",
    )
    assert code == 2 and "--per-domain" in err


def test_installed_script_exits_2_on_a_bad_base_url(tmp_path):
    result = subprocess.run(
        [str(PERSONAFUSE), "synthesize", "--base-url", "ftp://nowhere", "--model", "m", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: --base-url 'ftp://nowhere' is not an http(s) URL; give the server's OpenAI-compatible root, e.g. "
        "http://127.0.0.1:8000/v1 or https://api.openai.com/v1"
    ]


def test_ctrl_c_stops_cleanly_and_the_rerun_resumes(scripted, tmp_path):
    async def slow_model(body):
        await asyncio.sleep(0.05)
        return fake_model(body)

    scripted.reset(slow_model)
    args = [str(PERSONAFUSE), "synthesize", "--base-url", scripted.url, "--model", "scripted", "--out", str(tmp_path)]
    args += ["--domains", "grief_loss,planning", "--per-domain", "3", "--concurrency", "2", "--json"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 60
    annotations = tmp_path / "annotations.jsonl"
    while not (annotations.exists() and annotations.read_text().count("\n") >= 1):
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the run never reached the annotate stage"
        time.sleep(0.02)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=30)
    assert process.returncode == 130, err
    assert "interrupted" in err and "rerun the same command to resume" in err
    assert "Traceback" not in err
    done = [line.value["id"] for line in iter_jsonl(annotations)]
    assert 1 <= len(done) < 6

    scripted.reset()
    result = subprocess.run(args, capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["already_done"]["annotate"] == len(done) and summary["records"] == 6
    ids = [line.value["id"] for line in iter_jsonl(annotations)]
    assert len(ids) == len(set(ids)) == 6
