"""End-to-end tests of the synthesis pipeline over real HTTP on loopback, against the scripted server.

Fault injection proves: retries on 429/500/timeouts, repair of malformed JSON, rejection with a reason of what
stays invalid, resume without duplicates after a crash or a cancel, near-duplicate filtering.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections import Counter
from pathlib import Path

import pytest

from personafuse.data.jsonl import iter_jsonl
from personafuse.data.schema import SituationRecord
from personafuse.data.split import assign_split
from personafuse.data.synthesis import ServerUnreachable, SynthesisConfig, SynthesisPipeline
from personafuse.data.synthesis.pipeline import STAGE_NAMES
from scripted_openai_server import ScriptedServer, conversation_of, fake_model, serve, stage_of

STAGE_FILES = {
    "situations": "situations.jsonl",
    "annotate": "annotations.jsonl",
    "poles": "poles.jsonl",
    "ideal": "ideal.jsonl",
    "records": "records.jsonl",
}
IDS = {f"syn-{d}-{k:04d}" for d in ("grief_loss", "planning") for k in (1, 2, 3)}


@pytest.fixture(scope="module")
def scripted():
    server = ScriptedServer()
    with serve(server.create_app()) as url:
        server.url = url
        yield server


@pytest.fixture(autouse=True)
def _fresh(scripted):
    scripted.reset()
    scripted.slow_seconds = 2.0


def make_config(url: str, out: Path, **overrides) -> SynthesisConfig:
    values = {
        "base_url": url,
        "model": "scripted",
        "out_dir": out,
        "domains": ("grief_loss", "planning"),
        "per_domain": 3,
        "batch_size": 3,
        "concurrency": 4,
        "max_retries": 3,
        "max_repairs": 2,
        "timeout": 5.0,
        "backoff_initial": 0.001,
        "backoff_max": 0.01,
        "seed": 0,
    } | overrides
    return SynthesisConfig(**values)


def run(config: SynthesisConfig, **kwargs):
    return asyncio.run(SynthesisPipeline(config, **kwargs).run())


def ids_of(path: Path) -> list[str]:
    return [line.value["id"] for line in iter_jsonl(path)] if path.exists() else []


def assert_no_duplicates(out: Path) -> None:
    for name in STAGE_FILES.values():
        ids = ids_of(out / name)
        assert len(ids) == len(set(ids)), f"duplicate ids in {name}: {Counter(ids).most_common(2)}"


def test_happy_path_writes_complete_valid_records(scripted, tmp_path):
    summary = run(make_config(scripted.url, tmp_path))

    records = [SituationRecord.model_validate(line.value) for line in iter_jsonl(tmp_path / "records.jsonl")]
    assert {r.id for r in records} == IDS
    assert all(r.split == assign_split(r.id) for r in records)
    assert {r.domain for r in records} == {"grief_loss", "planning"}
    assert summary.accepted == dict.fromkeys(STAGE_NAMES, 6)
    assert summary.records == 6 and summary.rejected == {} and summary.failed == {}
    # 2 situation batches + 6 x 3 per-item requests, no retry, no repair
    assert summary.requests == len(scripted.requests) == 20
    assert summary.retries == 0 and summary.repairs == 0
    # the fake server reports whitespace-split word counts as usage; the summary must add them up exactly
    assert summary.prompt_tokens == sum(len(m["content"].split()) for b in scripted.requests for m in b["messages"])
    assert summary.completion_tokens > 0
    for stage, name in STAGE_FILES.items():
        assert set(ids_of(tmp_path / name)) == IDS, stage
    runs = [line.value for line in iter_jsonl(tmp_path / "runs.jsonl")]
    assert runs[-1]["status"] == "completed" and runs[-1]["summary"]["records"] == 6
    assert "api_key" not in runs[-1]["config"]
    # every request used the same model and a per-request seed; the SDK sent no retries of its own
    assert {b["model"] for b in scripted.requests} == {"scripted"}
    assert len({b["seed"] for b in scripted.requests}) == len(scripted.requests)


def test_rerun_of_a_finished_run_sends_nothing(scripted, tmp_path):
    config = make_config(scripted.url, tmp_path)
    run(config)
    before = len(scripted.requests)
    summary = run(config)
    assert len(scripted.requests) == before
    assert summary.requests == 0 and summary.records == 6
    assert summary.already_done == dict.fromkeys(STAGE_NAMES, 6)
    assert_no_duplicates(tmp_path)


def test_retries_on_429_500_and_timeout_then_succeed(scripted, tmp_path):
    scripted.slow_seconds = 1.0
    scripted.fail_next("429", "500", "slow")
    summary = run(make_config(scripted.url, tmp_path, timeout=0.4, concurrency=1))

    assert [fault for _, fault in scripted.log[:4]] == ["429", "500", "slow", "ok"]
    assert summary.retries == 3
    assert summary.requests == len(scripted.requests) == 20 + 3
    assert summary.failed == {} and summary.records == 6


def test_retries_exhausted_fail_the_item_and_a_rerun_asks_again(scripted, tmp_path):
    victim: dict[str, str] = {}

    def rule(body, index):
        if stage_of(body) != "annotate":
            return None
        conversation = victim.setdefault("conversation", conversation_of(body))
        return "500" if conversation_of(body) == conversation else None

    scripted.rule = rule
    config = make_config(scripted.url, tmp_path, max_retries=2)
    summary = run(config)
    assert summary.failed == {"annotate: server_error": 1}
    assert scripted.count("annotate", "500") == 3  # first try + 2 retries
    assert summary.records == 5 and summary.rejected == {}

    scripted.rule = None
    again = run(config)
    assert again.accepted["annotate"] == 1 and again.records == 6
    assert set(ids_of(tmp_path / "records.jsonl")) == IDS
    assert_no_duplicates(tmp_path)


def test_repair_fixes_malformed_json(scripted, tmp_path):
    # the first poles request of every item gets a malformed reply; the repair turn gets a valid one
    scripted.rule = lambda body, i: "malformed" if stage_of(body) == "poles" and len(body["messages"]) == 2 else None
    summary = run(make_config(scripted.url, tmp_path))

    assert summary.repairs == 6 and summary.records == 6 and summary.rejected == {}
    repairs = [b for b in scripted.requests if stage_of(b) == "poles" and len(b["messages"]) == 4]
    assert len(repairs) == 6
    assistant, user = repairs[0]["messages"][2:]
    assert assistant == {"role": "assistant", "content": '{"this is": not JSON'}
    assert "invalid JSON: Expecting value at line 1 column 13" in user["content"]


@pytest.mark.parametrize(
    ("stage", "bad_reply", "category", "reason"),
    [
        ("annotate", "I'd rather not answer in JSON.", "no_json", "holds no JSON object"),
        ("poles", json.dumps({"responses": {"O+": "only one"}}), "schema:responses", "missing"),
        ("ideal", json.dumps({"ideal": "Same.", "rejected": "Same."}), "schema:rejected", "identical"),
    ],
)
def test_items_that_stay_invalid_are_rejected_with_a_reason(scripted, tmp_path, stage, bad_reply, category, reason):
    victim: dict[str, str] = {}

    def model(body):
        if stage_of(body) == stage and victim.setdefault("c", conversation_of(body)) == conversation_of(body):
            return bad_reply
        return fake_model(body)

    scripted.reset(model)
    config = make_config(scripted.url, tmp_path, max_repairs=2)
    summary = run(config)

    assert summary.rejected == {f"{stage}: {category}": 1}
    assert summary.items_rejected == 1 and summary.records == 5
    assert scripted.count(stage) == 6 + 2  # the victim: first try + 2 repairs
    (row,) = [line.value for line in iter_jsonl(tmp_path / "rejected.jsonl")]
    assert row["stage"] == stage and row["category"] == category and reason in row["reason"]
    assert "after 2 repairs" in row["reason"] and row["reply"] == bad_reply
    assert row["id"] in IDS and row["id"] not in ids_of(tmp_path / "records.jsonl")

    # a rejection is final on resume ...
    before = scripted.count(stage)
    assert run(config).requests == 0 and scripted.count(stage) == before
    # ... unless asked to retry; now the model answers well
    scripted.reset()
    retried = run(make_config(scripted.url, tmp_path, retry_rejected=True))
    assert retried.records == 6
    assert_no_duplicates(tmp_path)


@pytest.mark.parametrize("crash_after", [2, 7, 14, 21, 27])
def test_crash_mid_run_then_resume_gives_the_same_ids_without_duplicates(scripted, tmp_path, crash_after):
    written: list[tuple[str, str]] = []

    def crash(stage, row):
        written.append((stage, row["id"]))
        if len(written) == crash_after:
            raise RuntimeError("injected crash")

    out = tmp_path / "run"
    config = make_config(scripted.url, out)
    with pytest.raises(RuntimeError, match="injected crash"):
        run(config, on_row=crash)
    lines_before = {name: ids_of(out / name) for name in STAGE_FILES.values()}
    # items whose reply had already arrived in the same event-loop turn may still land; nothing after that
    written_before = sum(map(len, lines_before.values()))
    assert crash_after <= written_before <= crash_after + config.batch_size * 2
    assert json.loads((out / "runs.jsonl").read_text().splitlines()[-1])["status"].startswith("failed: RuntimeError")

    summary = run(config)
    for name, before in lines_before.items():
        after = ids_of(out / name)
        assert after[: len(before)] == before  # append-only: earlier rows untouched
        assert set(after) == IDS
    assert_no_duplicates(out)
    assert summary.records == 6
    assert sum(summary.already_done.values()) == written_before


def test_cancel_mid_run_then_resume(scripted, tmp_path):
    async def slow_model(body):
        await asyncio.sleep(0.02)
        return fake_model(body)

    scripted.reset(slow_model)
    config = make_config(scripted.url, tmp_path, concurrency=3)

    async def cancel_during_poles():
        reached = asyncio.Event()
        pipeline = SynthesisPipeline(config, on_row=lambda stage, row: stage == "poles" and reached.set())
        task = asyncio.create_task(pipeline.run())
        await reached.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(cancel_during_poles())
    poles_done = ids_of(tmp_path / "poles.jsonl")
    assert 1 <= len(poles_done) < 6
    assert not (tmp_path / "records.jsonl").exists()
    assert json.loads((tmp_path / "runs.jsonl").read_text().splitlines()[-1])["status"] == "interrupted"

    summary = run(config)
    assert summary.already_done["poles"] == len(poles_done)
    assert set(ids_of(tmp_path / "records.jsonl")) == IDS
    assert_no_duplicates(tmp_path)


def test_near_duplicates_are_filtered(scripted, tmp_path):
    first = "My dog died yesterday and the house is so quiet now. What do I do with his bed?"
    near_copy = "my dog died yesterday -- and the house is so quiet now!! what do I do with his bed"
    same_opening = "My dog died yesterday and I have not told my kids yet, they are at camp until Sunday."
    calls = {"situations": 0}

    def model(body):
        if stage_of(body) == "situations" and "grief_loss" in body["messages"][1]["content"]:
            calls["situations"] += 1
            if calls["situations"] == 1:
                batch = [first, near_copy, same_opening]
                return json.dumps({"situations": [{"messages": [{"role": "user", "content": t}]} for t in batch]})
        return fake_model(body)

    scripted.reset(model)
    summary = run(make_config(scripted.url, tmp_path))

    assert summary.rejected == {"situations: near_duplicate": 1, "situations: same_opening": 1}
    assert calls["situations"] == 2  # a second round filled the two places
    assert set(ids_of(tmp_path / "records.jsonl")) == IDS
    rows = {r.value["category"]: r.value for r in iter_jsonl(tmp_path / "rejected.jsonl")}
    assert rows["near_duplicate"]["reason"].startswith("near-duplicate of syn-grief_loss-0001 (jaccard")
    assert rows["near_duplicate"]["id"] is None and rows["near_duplicate"]["domain"] == "grief_loss"
    # the second round's prompt listed the kept situation so the model can avoid it
    second = [
        b for b in scripted.requests if stage_of(b) == "situations" and "grief_loss" in b["messages"][1]["content"]
    ]
    assert "do not repeat their openings" in second[1]["messages"][1]["content"]
    assert "My dog died yesterday and the house" in second[1]["messages"][1]["content"]

    # on resume with a larger target, kept situations still count: a copy of one is rejected
    def copy_model(body):
        if stage_of(body) == "situations":
            return json.dumps({"situations": [{"messages": [{"role": "user", "content": first.upper()}]}]})
        return fake_model(body)

    scripted.reset(copy_model)
    more = run(make_config(scripted.url, tmp_path, per_domain=4, domains=("grief_loss",)))
    assert more.rejected["situations: near_duplicate"] >= 1
    assert more.incomplete_domains == {"grief_loss": "3/4 situations after 6 batch requests"}


def test_unreachable_server_stops_with_a_user_error(tmp_path):
    with socket.socket() as sock:  # a port that nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = make_config(f"http://127.0.0.1:{port}/v1", tmp_path, max_retries=1)
    with pytest.raises(ServerUnreachable, match=rf"cannot reach http://127.0.0.1:{port}/v1 .* check --base-url"):
        run(config)
    assert "failed: ServerUnreachable" in json.loads((tmp_path / "runs.jsonl").read_text())["status"]


def test_wrong_path_is_a_404_user_error(scripted, tmp_path):
    config = make_config(scripted.url.removesuffix("/v1"), tmp_path)
    with pytest.raises(ServerUnreachable, match=r"answered 404 .*\(it usually ends in /v1\)"):
        run(config)


def test_bad_request_stops_the_run_only_when_nothing_ever_worked(scripted, tmp_path):
    scripted.fail_next("400")
    with pytest.raises(ServerUnreachable, match="rejected the first request .*HTTP 400"):
        run(make_config(scripted.url, tmp_path / "a", concurrency=1))

    scripted.reset()
    scripted.rule = lambda body, i: "400" if stage_of(body) == "ideal" and i % 2 else None
    summary = run(make_config(scripted.url, tmp_path / "b", concurrency=1))
    assert summary.rejected["ideal: bad_request"] >= 1
    assert summary.records == 6 - summary.rejected["ideal: bad_request"]
