"""The synthesis pipeline against the real SmolLM2-135M-Instruct, served on loopback (slow, opt-in: -m slow).

Quality does not matter: a 135M model rarely writes valid JSON for these prompts. What must hold is that the
pipeline does not crash, that every record it writes is complete and valid, and that everything else is
rejected with a reason (and counted in the summary exactly as in rejected.jsonl).
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from personafuse.data.jsonl import append_jsonl, iter_jsonl
from personafuse.data.schema import SituationRecord
from personafuse.data.synthesis import SynthesisConfig, SynthesisPipeline
from scripted_openai_server import ScriptedServer, serve
from smollm2_openai_server import BatchedChatModel

KEPT_SITUATION = {
    "id": "syn-casual_chat-0001",
    "domain": "casual_chat",
    "messages": [{"role": "user", "content": "ok random question but do you think pineapple on pizza is a crime"}],
    "prompt": "hand-written",
    "model": "none",
}


def rows(path: Path) -> list[dict[str, Any]]:
    return [line.value for line in iter_jsonl(path)] if path.exists() else []


@pytest.mark.slow
def test_two_situation_synthesis_against_smollm2(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    from personafuse.models import load_base_model

    model, tokenizer = load_base_model("smollm2-135m-instruct")
    # One situation is already on file (as after an interrupted run), so that stages 2-4 run against the real
    # model even when it writes no valid situation itself; stage 1 is asked for the second one.
    append_jsonl(tmp_path / "situations.jsonl", KEPT_SITUATION)
    server = ScriptedServer(model=BatchedChatModel(model, tokenizer, max_batch=2))
    with serve(server.create_app()) as url:
        config = SynthesisConfig(
            base_url=url,
            model="smollm2-135m-instruct",
            out_dir=tmp_path,
            domains=("casual_chat",),
            per_domain=2,
            batch_size=2,
            concurrency=2,
            max_tokens=80,
            max_repairs=1,
            timeout=600.0,
            temperature=0.7,
        )
        summary = asyncio.run(SynthesisPipeline(config).run())
    assert summary.already_done["situations"] == 1
    print(json.dumps(summary.to_dict(), indent=2))

    assert summary.requests == len(server.requests) > 0
    assert summary.failed == {}
    assert summary.prompt_tokens > 0 and summary.completion_tokens > 0
    records = [SituationRecord.model_validate(row) for row in rows(tmp_path / "records.jsonl")]
    assert summary.records == len(records)
    rejected = rows(tmp_path / "rejected.jsonl")
    assert all(row["reason"] and row["category"] for row in rejected)
    assert Counter(f"{row['stage']}: {row['category']}" for row in rejected) == Counter(summary.rejected)
    # every kept situation ends as a record or as a rejection at a later stage
    situations = [row["id"] for row in rows(tmp_path / "situations.jsonl")]
    rejected_ids = {row["id"] for row in rejected if row["id"]}
    assert {r.id for r in records} | rejected_ids == set(situations)
    assert KEPT_SITUATION["id"] in situations
    assert server.count("annotate") >= 1  # the later stages did talk to the model
    assert len(records) + summary.items_rejected > 0
