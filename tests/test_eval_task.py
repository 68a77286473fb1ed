"""The task machinery: subsets, data-file lookup and errors, config validation, the registry, results, resume."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pytest

from personafuse.errors import ConfigError
from personafuse.evaluate import TASKS, ScriptedModel, TaskResult, get_task
from personafuse.evaluate.choice import argmax_first, parse_choice
from personafuse.evaluate.task import (
    MissingDataError,
    RecordLog,
    ResumeMismatchError,
    Task,
    TaskConfig,
    UnknownTaskError,
    build_config,
    data_file,
    file_sha256,
    find_data_file,
    select_items,
)


def test_select_items_is_deterministic_sorted_and_complete_without_limit():
    items = list(range(100))
    a, b = select_items(items, 10, seed=3), select_items(items, 10, seed=3)
    assert a == b and a == sorted(a) and len(set(a)) == 10
    assert select_items(items, 10, seed=4) != a
    assert select_items(items, None, 0) == items and select_items(items, 500, 0) == items


def test_find_data_file_accepts_file_folder_and_data_root(tmp_path):
    (tmp_path / "emobench").mkdir()
    target = tmp_path / "emobench" / "EU.jsonl"
    target.write_text("{}\n")
    for given in (target, tmp_path / "emobench", tmp_path):
        assert find_data_file(given, "EU.jsonl", "emobench", "emobench", "EmoBench") == target
    with pytest.raises(MissingDataError, match=r"task emobench needs --data PATH: a folder holding EU.jsonl"):
        find_data_file(None, "EU.jsonl", "emobench", "emobench", "EmoBench")
    with pytest.raises(MissingDataError, match=r"--data .*nope does not exist; task emobench needs"):
        find_data_file(tmp_path / "nope", "EU.jsonl", "emobench", "emobench", "EmoBench")
    with pytest.raises(MissingDataError, match=r"has no EA.jsonl \(nor emobench/EA.jsonl\)"):
        find_data_file(tmp_path, "EA.jsonl", "emobench", "emobench", "EmoBench")


def test_data_file_records_the_sha256(tmp_path):
    path = tmp_path / "x.txt"
    path.write_bytes(b"abc")
    # sha256("abc"), FIPS 180-2 test vector
    assert file_sha256(path) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert data_file(path).sha256 == file_sha256(path)


@dataclass
class _Config(TaskConfig):
    flavour: Literal["sweet", "sour"] = "sweet"
    """A closed choice."""


def test_config_validation_collects_every_problem_with_the_flag_names():
    with pytest.raises(
        ConfigError,
        match=r"--limit must be a positive whole number .* got 0; --flavour must be one of sweet, sour; got 'bitter'",
    ):
        _Config(limit=0, flavour="bitter")  # type: ignore[arg-type]
    with pytest.raises(
        ConfigError, match=r"task demo has no option\(s\) \['colour'\]; its options are: batch_items, flavour"
    ):
        build_config(_Config, "demo", {"colour": "red"})


def test_registry_lists_every_task_and_rejects_unknown_names():
    assert {"emobench", "eqbench", "personality", "gsm8k", "mmlu", "safety", "judge", "counseling", "customer_service"} <= set(TASKS)
    assert get_task("emobench").name == "emobench"
    with pytest.raises(UnknownTaskError, match=r"unknown eval task 'emobenc'; use one of: counseling, customer_service, emobench, eqbench"):
        get_task("emobenc")


# ---------------------------------------------------------------------------------------------------- a toy task
@dataclass
class _ToyConfig(TaskConfig):
    pass


class _Toy(Task):
    """Items are numbers; the model 'answers' by generating; correct when the reply equals the number."""

    name = "toy"
    config_class = _ToyConfig

    @classmethod
    def load(cls, path: Any, limit: int | None = None, seed: int = 0, **options: Any) -> _Toy:
        config = build_config(_ToyConfig, cls.name, {"limit": limit, "seed": seed, **options})
        return cls(config, select_items([str(i) for i in range(20)], config.limit, config.seed), [])

    @staticmethod
    def key(item: str) -> str:
        return item

    def process(self, model: Any, items: Any) -> list[dict[str, Any]]:
        replies = model.generate([[{"role": "user", "content": i}] for i in items], 4)
        return [{"key": i, "correct": r == i} for i, r in zip(items, replies)]

    def score(self, rows: Any) -> tuple[dict[str, float], dict[str, int], dict[str, Any]]:
        return {"accuracy": sum(r["correct"] for r in rows) / len(rows)}, {"items": len(rows)}, {}


def _echo() -> ScriptedModel:
    return ScriptedModel(reply=lambda conv: conv[-1]["content"], name="echo")


def test_run_resumes_from_a_partial_records_file(tmp_path):
    records = tmp_path / "toy.records.jsonl"
    task = _Toy.load(None, batch_items=4)
    first = _echo()
    full = task.run(first, records=records)
    assert first.calls["generate"] == 20 and full.metrics == {"accuracy": 1.0}
    lines = records.read_text().splitlines()
    records.write_text("\n".join(lines[:8]) + '\n{"key": "torn', encoding="utf-8")  # header + 7 rows + a torn line
    again = _echo()
    resumed = task.run(again, records=records)
    assert again.calls["generate"] == 13 and resumed.metrics == full.metrics
    done = _echo()
    task.run(done, records=records)
    assert done.calls["generate"] == 0


def test_resume_refuses_records_of_another_run(tmp_path):
    records = tmp_path / "toy.records.jsonl"
    _Toy.load(None, limit=5).run(_echo(), records=records)
    with pytest.raises(ResumeMismatchError, match=r"belongs to another run \(config: .*limit.*\); delete it"):
        _Toy.load(None, limit=6).run(_echo(), records=records)
    with pytest.raises(ResumeMismatchError, match=r"model: 'echo' there vs 'other' now"):
        _Toy.load(None, limit=5).run(ScriptedModel(reply=lambda c: "", name="other"), records=records)


def test_record_log_in_memory_writes_nothing(tmp_path):
    log = RecordLog(None, {"task": "x"})
    log.add([{"key": "a", "v": 1}])
    assert log.rows == {"a": {"key": "a", "v": 1}} and not list(tmp_path.iterdir())


def test_result_round_trips_and_rejects_foreign_json(tmp_path):
    result = _Toy.load(None, limit=3, seed=1).run(_echo())
    path = result.save(tmp_path / "r.json")
    loaded = TaskResult.load(path)
    assert loaded == result and loaded.config["limit"] == 3 and loaded.versions["python"]
    (tmp_path / "other.json").write_text(json.dumps({"hello": 1}))
    with pytest.raises(Exception, match="is not a personafuse eval result"):
        TaskResult.load(tmp_path / "other.json")


def test_choice_helpers_break_ties_towards_the_first_option_and_parse_letters():
    assert argmax_first([-1.0, -1.0, -2.0]) == 0 and argmax_first([-3.0, -1.0, -1.0]) == 1
    cases = {"B": 1, "b) no": None, "(C) because": 2, '{"answer": "d"}': 3, "The answer is A.": 0,
             "A good friend would": None, "Inform their parents": 1, "": None}  # fmt: skip
    for reply, expected in cases.items():
        assert parse_choice(reply, 4, ["Keep it", "Inform their parents", "Confront", "Talk"]) == expected, reply


def test_every_registered_task_config_field_has_a_docstring():
    from personafuse.cli.eval_cmd import field_docs

    for name, cls in TASKS.items():
        docs = field_docs(cls.config_class)
        for field in cls.config_class.__dataclass_fields__:
            assert docs.get(field), f"{name}: config field {field!r} lacks a docstring (it is the --help text)"


def test_paths_are_not_assumed(tmp_path):
    # Every task needs its data as an argument: no task silently reads ../shared/data.
    for name, cls in TASKS.items():
        with pytest.raises(Exception, match=r"needs --data|needs --against|--data"):
            cls.load(None, **({"against": str(tmp_path / "b.json")} if name == "judge" else {}))
    assert Path.cwd()  # (no file was created in the working directory)
