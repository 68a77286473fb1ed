"""`personafuse train` end to end on configs/tiny.yaml, bad runs refused before any model loads, accelerate wiring."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from personafuse.traits import POLES

REPO = Path(__file__).resolve().parents[1]


def run_cli(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """Run the `personafuse` entry point in this process (as the script does: one-line errors, exit code 2)."""
    from personafuse.cli import app
    from personafuse.cli.errors import run_app

    monkeypatch.setattr(sys, "argv", ["personafuse", *args])
    monkeypatch.setenv("COLUMNS", "250")
    code = 0
    try:
        run_app(app)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture()
def no_model_loads(monkeypatch):
    """Fail the test if anything tries to build a model."""
    from personafuse import PersonaFuse
    from personafuse.routing import PersonaRouter

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the config was validated")

    monkeypatch.setattr(PersonaFuse, "_assemble", classmethod(refuse))
    monkeypatch.setattr(PersonaRouter, "create", classmethod(refuse))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["experts.lr=-1"], r"experts.lr=-1: expected a number > 0"),
        (["--experts.lr", "abc"], r"experts.lr='abc': expected a number"),
        (["experts.learning_rate=1e-4"], r"unknown key 'experts.learning_rate'; known keys here: .*lr"),
        (["model.experts.rank=0"], r"model.experts: rank must be a positive integer, got 0"),
        (["data.general_ratio=1.5"], r"data.general_ratio=1.5: expected a number in \[0, 1\)"),
        (["data.corpus=/no/such/corpus"], r"data.corpus='/no/such/corpus': no such JSONL file or folder"),
        (["data.general=/no/such.jsonl"], r"data.general='/no/such.jsonl': no such JSONL file"),
        (["model.base=./no-such-model"], r"model.base='./no-such-model': no such folder"),
        (["--stage", "sft"], r"--stage 'sft': expected one of experts, router, preference, sft_baseline or all"),
        (["stray"], r"unexpected argument 'stray'; overrides look like experts.lr=1e-4"),
        (
            ["--config", "no-such-config"],
            r"--config 'no-such-config': no such file or config name; known configs: .*tiny",
        ),
    ],
)
def test_bad_runs_fail_in_one_line_before_any_model_loads(monkeypatch, capsys, tiny_base, tmp_path, no_model_loads,
                                                          args, message):  # fmt: skip
    base_args = ["train", "--config", "configs/tiny.yaml", f"model.base={tiny_base}", f"output_dir={tmp_path}"]
    if args[:1] == ["--config"]:
        base_args = ["train"]
    monkeypatch.chdir(REPO)
    code, out, err = run_cli(monkeypatch, capsys, *base_args, *args)
    assert code == 2, (out, err)
    assert re.search(message, err), err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_general_data_without_the_needed_fields_is_refused(monkeypatch, capsys, tiny_base, tmp_path, no_model_loads):
    general = tmp_path / "general.jsonl"
    general.write_text(json.dumps({"question": "2+2?", "answer": "4"}) + "\n" + json.dumps({"title": "x"}) + "\n")
    monkeypatch.chdir(REPO)
    code, _, err = run_cli(monkeypatch, capsys, "train", "--config", "configs/tiny.yaml", f"model.base={tiny_base}",
                           f"data.general={general}", f"output_dir={tmp_path / 'run'}")  # fmt: skip
    assert code == 2
    assert f"{general}:2 has fields ['title'] but needs one of the layouts question/answer" in err
    assert len(err.strip().splitlines()) == 1


def test_all_problems_are_reported_at_once(monkeypatch, capsys, tiny_base, tmp_path, no_model_loads):
    monkeypatch.chdir(REPO)
    code, _, err = run_cli(monkeypatch, capsys, "train", "--config", "configs/tiny.yaml", f"model.base={tiny_base}",
                           "experts.lr=-1", "experts.batch_size=0", "nope.x=1")  # fmt: skip
    assert code == 2
    for part in ("experts.lr=-1", "experts.batch_size=0", "unknown key 'nope'"):
        assert part in err


def test_parse_overrides_accepts_the_three_forms():
    from personafuse.cli.train_cmd import parse_overrides

    assert parse_overrides(["experts.lr=1e-4", "--data.max_length=64", "--seed", "3"]) == [
        "experts.lr=1e-4", "data.max_length=64", "seed=3"]  # fmt: skip
    assert parse_overrides(["--experts.lr", "1e-4", "a.b=c"]) == ["experts.lr=1e-4", "a.b=c"]


def test_train_tiny_end_to_end(monkeypatch, capsys, tiny_base, tmp_path):
    """configs/tiny.yaml, stage 1, with a general-data mix: checkpoint, resolved config, metrics, summary."""
    general = tmp_path / "general.jsonl"
    general.write_text("".join(json.dumps({"question": f"what is {i}+{i}?", "answer": f"{2 * i}"}) + "\n"
                               for i in range(30)))  # fmt: skip
    out_dir = tmp_path / "run"
    monkeypatch.chdir(REPO)
    code, out, err = run_cli(monkeypatch, capsys, "train", "--config", "tiny", "--stage", "experts", "--json",
                             "--no-progress", f"model.base={tiny_base}", f"data.general={general}",
                             "--experts.lr", "5e-4", "--output-dir", str(out_dir))  # fmt: skip
    assert code == 0, err
    summary = json.loads(out)
    assert [s["stage"] for s in summary["stages"]] == ["experts"]
    experts = summary["stages"][0]
    assert experts["status"] == "trained" and experts["metrics"]["steps"] == 2
    assert experts["metrics"]["data"]["general"] > 0 and experts["metrics"]["tokens_per_s"] > 0
    checkpoint = out_dir / "experts" / "checkpoint"
    assert summary["checkpoint"] == str(checkpoint)
    assert json.loads((out_dir / "summary.json").read_text())["checkpoint"] == str(checkpoint)
    assert (checkpoint / "config.json").is_file() and (checkpoint / "router.safetensors").is_file()
    for pole in POLES:
        assert (checkpoint / "experts" / pole / "adapter_model.safetensors").is_file()
        assert (checkpoint / "experts" / pole / "adapter_config.json").is_file()
    resolved = yaml.safe_load((out_dir / "config.yaml").read_text())
    assert resolved["experts"]["lr"] == 5e-4 and resolved["model"]["base"] == tiny_base
    assert resolved["output_dir"] == str(out_dir) and resolved["data"]["general"] == str(general)
    rows = [json.loads(line) for line in (out_dir / "experts" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2]
    assert (out_dir / "experts" / "losses.png").is_file()

    # the same command again: stage 1 is finished, nothing trains; the table form prints the summary
    code, out, err = run_cli(monkeypatch, capsys, "train", "--config", "tiny", "--stage", "experts", "--no-progress",
                             f"model.base={tiny_base}", f"data.general={general}", "--experts.lr", "5e-4",
                             "--output-dir", str(out_dir))  # fmt: skip
    assert code == 0, err
    assert "cached" in out and "experts" in out
    # other settings on the same folder: refused before loading, with the fix
    code, _, err = run_cli(monkeypatch, capsys, "train", "--config", "tiny", "--stage", "experts",
                           f"model.base={tiny_base}", f"data.general={general}", "--output-dir", str(out_dir))  # fmt: skip
    assert code == 2 and "experts.lr: 0.0005 -> 0.001" in err and "--fresh" in err


@pytest.mark.slow
def test_two_process_cpu_launch_with_accelerate(tiny_base, tmp_path):
    """Two CPU processes in one gloo group: both ranks train, rank 0 saves a loadable checkpoint.

    ``accelerate launch --cpu`` starts a single process unless MPI is set up, so the processes are started the
    way ``--multi_gpu`` does (torchrun) with the GPUs hidden; ``use_cpu`` then puts them in one gloo group.
    """
    from personafuse import PersonaFuse

    if shutil.which("accelerate", path=str(Path(sys.executable).parent)) is None:
        pytest.skip("accelerate CLI not installed")
    out_dir = tmp_path / "ddp"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1",
           "CUDA_VISIBLE_DEVICES": "", "ACCELERATE_USE_CPU": "1"}  # fmt: skip
    command = [str(Path(sys.executable).parent / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "personafuse.cli",
               "train", "--config", "configs/tiny.yaml", "--stage", "experts", "--no-progress", "--json",
               f"model.base={tiny_base}", f"output_dir={out_dir}", "experts.max_steps=2"]  # fmt: skip
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "rank 1/2 finished experts" in result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    metrics = summary["stages"][0]["metrics"]
    assert metrics["world_size"] == 2 and metrics["steps"] == 2
    pf = PersonaFuse.from_pretrained(out_dir / "experts" / "checkpoint", device="cpu")
    assert len(pf.generate([[{"role": "user", "content": "my cat died"}]], persona="A+=1", max_new_tokens=3)) == 1


@pytest.mark.slow
def test_two_process_cpu_launch_of_the_preference_stage(tiny_base, tiny_pf_factory, tmp_path, monkeypatch):
    """Stage 3 (DPO) on two CPU processes in one gloo group ends where one process ends.

    The start is a tiny PersonaFuse with random non-zero experts, saved where the pipeline looks for the newest
    checkpoint (``<output_dir>/checkpoint``). Each rank takes one of the two pairs of every step; the router trains
    too, so the head's and router's gradients are all-reduced with the experts'. Rank 0 writes the metrics and a
    loadable checkpoint. The same run on one process (here, in-process) must log the same losses and gradient
    norms (the pre-clipping norm would differ if the shards' losses were scaled wrongly) and end with the same
    trainable weights (they would differ if a rank's gradients were not averaged in).
    """
    from safetensors.torch import load_file

    from personafuse import PersonaFuse
    from personafuse.train.config import load_train_config
    from personafuse.train.preference_stage import train_preference

    if shutil.which("accelerate", path=str(Path(sys.executable).parent)) is None:
        pytest.skip("accelerate CLI not installed")
    out_dir = tmp_path / "ddp"
    start = out_dir / "checkpoint"
    tiny_pf_factory().save_pretrained(start)
    overrides = [f"model.base={tiny_base}", "preference.max_steps=2", "preference.batch_size=2", "preference.lr=1e-3",
                 "preference.train_router=true", "preference.eval_prompts=2", "preference.max_new_tokens=4"]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1",
           "CUDA_VISIBLE_DEVICES": "", "ACCELERATE_USE_CPU": "1"}  # fmt: skip
    command = [str(Path(sys.executable).parent / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "personafuse.cli",
               "train", "--config", "configs/tiny.yaml", "--stage", "preference", "--no-progress", "--json",
               f"output_dir={out_dir}", *overrides]  # fmt: skip
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "rank 1/2 finished preference" in result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    metrics = summary["stages"][0]["metrics"]
    assert summary["stages"][0]["stage"] == "preference" and metrics["world_size"] == 2 and metrics["steps"] == 2
    folder = out_dir / "preference"
    assert json.loads((folder / "summary.json").read_text())["world_size"] == 2 and (folder / "losses.png").is_file()
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]  # one writer: no row twice
    pf = PersonaFuse.from_pretrained(folder / "checkpoint", device="cpu")
    assert len(pf.generate([[{"role": "user", "content": "my cat died"}]], max_new_tokens=3)) == 1
    for name in ("experts/A+/adapter_model.safetensors", "router.safetensors"):
        tuned, initial = load_file(str(folder / "checkpoint" / name)), load_file(str(start / name))
        assert tuned.keys() == initial.keys() and any(not torch.equal(tuned[k], initial[k]) for k in tuned), name

    # the same run on one process
    monkeypatch.chdir(REPO)
    config = load_train_config(REPO / "configs" / "tiny.yaml", [*overrides, f"output_dir={tmp_path / 'one'}"])
    one = train_preference(config, start, progress=False)
    assert one.world_size == 1
    single = [json.loads(line) for line in (one.metrics_path).read_text().splitlines()]
    for key in ("loss", "reward_margin", "grad_norm"):
        assert [r[key] for r in rows] == pytest.approx([r[key] for r in single], rel=1e-4, abs=1e-6), key
    two, alone = (load_file(str(f / "state" / "trainable.safetensors")) for f in (folder, one.metrics_path.parent))
    assert two.keys() == alone.keys() and any(k.startswith("router.") for k in two)
    for name in two:
        torch.testing.assert_close(two[name], alone[name], atol=1e-5, rtol=1e-4, msg=name)


def test_a_stage_that_is_not_written_yet_is_reported(monkeypatch, capsys, tiny_base, tmp_path, no_model_loads):
    from personafuse.train import pipeline

    monkeypatch.setitem(pipeline.STAGE_MODULES, "preference", ("personafuse.train.no_such_stage", "train"))
    monkeypatch.chdir(REPO)
    code, _, err = run_cli(monkeypatch, capsys, "train", "--config", "configs/tiny.yaml", "--stage", "preference",
                           f"model.base={tiny_base}", f"output_dir={tmp_path}")  # fmt: skip
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "stage 'preference' is not available yet (personafuse.train.no_such_stage is not written)" in err
