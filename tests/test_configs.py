"""Every YAML in configs/ loads and validates (STYLE rule 9); config errors name their key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from personafuse.errors import ConfigError
from personafuse.train.config import load_train_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
TRAIN_CONFIGS = sorted(CONFIGS.glob("*.yaml"))
ACCELERATE_CONFIGS = sorted((CONFIGS / "accelerate").glob("*.yaml"))


def test_the_shipped_configs_are_there():
    names = {p.stem for p in TRAIN_CONFIGS}
    assert {"tiny", "smollm2-cpu", "llama3.1-8b", "qwen2.5-7b"} <= names
    assert {p.stem for p in ACCELERATE_CONFIGS} >= {"ddp", "fsdp", "deepspeed_zero2"}


@pytest.mark.parametrize("path", TRAIN_CONFIGS, ids=lambda p: p.name)
def test_every_training_config_loads_and_validates(path):
    from personafuse.train.config import STAGES

    config = load_train_config(path)  # unknown keys, wrong types, bad values all raise here
    assert config.stages and set(config.stages) <= set(STAGES)
    assert config.model.experts.rank > 0
    if "8b" in path.stem or "7b" in path.stem:  # GPU configs: bf16 base, fp32 experts under autocast, checkpointing
        assert config.model.dtype == "bfloat16" and config.experts.mixed_precision == "bf16"
        assert config.experts.gradient_checkpointing


def test_the_cpu_default_validates_against_the_real_data(monkeypatch):
    """configs/smollm2-cpu.yaml: its data files exist here and have the needed fields (no model loads)."""
    from personafuse.train.pipeline import STAGE_MODULES, stage_available, validate_run

    monkeypatch.chdir(CONFIGS.parent)
    config = load_train_config(CONFIGS / "smollm2-cpu.yaml")
    if config.data.general and not Path(config.data.general).is_file():
        pytest.skip(f"shared data {config.data.general} not here")
    stages = [s for s in config.stages if stage_available(s)]
    assert "experts" in stages and set(stages) <= set(STAGE_MODULES)
    validate_run(config, stages, fresh=True)


@pytest.mark.parametrize("path", ACCELERATE_CONFIGS, ids=lambda p: p.name)
def test_every_accelerate_config_is_one_accelerate_reads(path):
    from accelerate.commands.config.config_args import ClusterConfig

    raw = yaml.safe_load(path.read_text())
    config = ClusterConfig.from_yaml_file(str(path))  # raises on keys accelerate does not know
    assert config.distributed_type.value == raw["distributed_type"]
    assert config.num_processes >= 2


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["experts.lr=0"], r"experts.lr=0: expected a number > 0"),
        (["experts.max_steps=0"], r"experts.max_steps=0: expected an integer >= 1, or -1 to run the epochs"),
        (["experts.warmup_ratio=1.5"], r"experts.warmup_ratio=1.5: expected a number in \[0, 1\)"),
        (["experts.mixed_precision=fp8"], r"experts.mixed_precision='fp8': expected one of \['no', 'bf16', 'fp16'\]"),
        (["data.max_length=8"], r"data.max_length=8: expected an integer >= 16"),
        (["experts.batch_size=two"], r"experts.batch_size='two': expected an integer"),
    ],
)
def test_config_errors_name_the_key_and_the_expected_value(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_train_config(CONFIGS / "tiny.yaml", overrides)
