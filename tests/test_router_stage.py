"""Stage 2 (persona head + router): the recipe on a tiny corpus with the real MiniLM, and the training step."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest
import torch

from personafuse.errors import ConfigError
from personafuse.routing import PersonaHead, Router
from personafuse.train.config import RouterStageConfig, TrainConfig, load_train_config
from personafuse.train.metrics import read_metrics
from personafuse.train.router_stage import learning_rate, train_router, train_step

REPO = Path(__file__).resolve().parents[1]

# (text, activation O C E A N): a few situation kinds with clear profiles, several phrasings each.
KINDS = [
    (["my dog died this morning", "my grandmother passed away", "I lost my best friend last week",
      "we had to put our cat down", "my uncle died suddenly", "I can't stop crying since the funeral"],
     {"O": 0.0, "C": 0.0, "E": -0.5, "A": 0.9, "N": -0.7}),
    (["the server throws a null pointer error", "my python script crashes on import",
      "the build fails with a linker error", "how do I fix this segfault", "the database migration broke",
      "my API returns 500 on every request"],
     {"O": -0.5, "C": 0.9, "E": 0.0, "A": 0.0, "N": 0.0}),
    (["we won the championship!!", "I got the job offer!!!", "she said yes, we're engaged!",
      "I passed my exams, let's party", "our band got signed!", "I just got promoted, celebrate with me"],
     {"O": 0.4, "C": -0.4, "E": 0.9, "A": 0.4, "N": 0.0}),
    (["give me wild ideas for a sci-fi story", "brainstorm weird names for a cafe",
      "invent a new board game with me", "what if cities floated in the sky", "dream up an art project",
      "imagine a new holiday and its rituals"],
     {"O": 0.9, "C": -0.4, "E": 0.4, "A": 0.0, "N": 0.0}),
]  # fmt: skip


def write_tiny_corpus(folder: Path) -> Path:
    """24 contexts over 4 profiles; per profile 4 train, 1 val, 1 test."""
    rows = []
    for k, (texts, activation) in enumerate(KINDS):
        for i, text in enumerate(texts):
            split = "train" if i < 4 else ("val" if i == 4 else "test")
            rows.append({"id": f"k{k}-{i}", "messages": [{"role": "user", "content": text}],
                         "activation": activation, "split": split})  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "corpus.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(autouse=True)
def _shared_encoder(monkeypatch):
    """Load MiniLM once for the whole module (it is frozen; the recipe only calls encode)."""
    import personafuse.models as models

    global _cached_load
    if "_cached_load" not in globals():
        _cached_load = functools.lru_cache(maxsize=2)(models.load_encoder)
    monkeypatch.setattr(models, "load_encoder", _cached_load)


def tiny_config(tmp_path: Path, *overrides: str) -> TrainConfig:
    corpus = write_tiny_corpus(tmp_path)
    return load_train_config(
        overrides=[
            f"data.corpus={corpus}", f"output_dir={tmp_path / 'run'}", "router.epochs=3", "router.batch_size=8",
            "router.lr=3e-3", *overrides,
        ]
    )  # fmt: skip


def test_train_router_writes_outputs_and_the_loss_decreases(tmp_path):
    result = train_router(tiny_config(tmp_path))
    out = tmp_path / "run" / "router"
    assert result.output_dir == out
    for name in ("router.safetensors", "metrics.jsonl", "losses.png", "router_metrics.json", "state.pt"):
        assert (out / name).is_file(), name
    assert list(out.glob("embeddings-*.safetensors")), "the embedding cache"
    rows = read_metrics(result.metrics_path)
    steps = [r for r in rows if "loss" in r]
    assert len(steps) == 3 * 2  # 16 train contexts / batch 8 = 2 steps per epoch
    first, last = [sum(r["loss"] for r in steps if r["epoch"] == e) / 2 for e in (1, 3)]
    assert last < first
    summary = json.loads(result.summary_path.read_text())
    assert summary == result.metrics
    assert set(summary["val"]) == {"trained", "zero_shot", "constant"} and "test" not in summary
    assert set(summary["val"]["trained"]) == {"O", "C", "E", "A", "N", "mean", "gate_mass_on_activated"}
    assert summary["contexts"] == {"train": 16, "val": 4, "test": 4}
    assert summary["timing_s"]["embedded_now"] == 24

    # the saved weights load into a fresh router and route the same way
    from personafuse.routing import PersonaRouter

    fresh = PersonaRouter.create("minilm-l6")
    fresh.load(result.router_path)
    assert fresh.route("my hamster died")[0].activation.values[3] > 0.33


def test_rerun_after_a_kill_resumes_and_ends_identical(tmp_path):
    unbroken = train_router(tiny_config(tmp_path / "a"))

    class Killed(RuntimeError):
        pass

    def kill_after_first(epoch, row):
        if epoch == 1:
            raise Killed

    config = tiny_config(tmp_path / "b", "router.eval_test=true")
    with pytest.raises(Killed):
        train_router(config, on_epoch_end=kill_after_first)
    # a kill in the middle of epoch 2 would also have left that epoch's first step in the metrics file
    from personafuse.data.jsonl import append_jsonl

    append_jsonl(Path(config.output_dir) / "router" / "metrics.jsonl", {"stage": "router", "step": 3, "loss": 9.9})
    resumed = train_router(config)
    assert resumed.resumed_from_epoch == 1
    assert resumed.metrics["timing_s"]["embedded_now"] == 0  # the cache from the killed run was reused

    from safetensors.torch import load_file

    a, b = load_file(str(unbroken.router_path)), load_file(str(resumed.router_path))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-6), key

    def strip(rows):
        return [{k: v for k, v in r.items() if k != "elapsed_s"} for r in rows]

    assert strip(read_metrics(unbroken.metrics_path)) == strip(read_metrics(resumed.metrics_path))
    assert resumed.metrics["val"] == unbroken.metrics["val"]
    assert set(resumed.metrics["test"]) == {"trained", "zero_shot", "constant"}  # eval_test adds the test split


def test_bad_config_fails_in_one_line_before_any_model_loads(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match=r"router\.temperature=0: expected a number > 0 \(default 0\.2\)"):
        load_train_config(overrides=["router.temperature=0"])
    with pytest.raises(ConfigError, match=r"router\.grad_accum=0: expected an integer >= 1"):
        RouterStageConfig(grad_accum=0)

    import personafuse.models as models

    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded before the config was checked")

    monkeypatch.setattr(models, "load_encoder", no_model)
    missing = load_train_config(overrides=[f"data.corpus={tmp_path / 'nope'}", f"output_dir={tmp_path}"])
    with pytest.raises(ConfigError, match=r"data.corpus=.*nope.*no such corpus file or folder") as info:
        train_router(missing)
    assert "\n" not in str(info.value)

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}], "activation": {"O": 2}}\nnot json\n')
    config = load_train_config(overrides=[f"data.corpus={bad}", f"output_dir={tmp_path}"])
    with pytest.raises(ConfigError, match=r"bad.jsonl:1: 'activation' must map exactly .*bad.jsonl:2: not a JSON"):
        train_router(config)


def test_a_checkpoint_from_other_settings_is_refused(tmp_path):
    train_router(tiny_config(tmp_path, "router.epochs=1"))
    with pytest.raises(ConfigError, match=r"state.pt was written by a run with other settings \(router differ\)"):
        train_router(tiny_config(tmp_path, "router.epochs=1", "router.lr=1e-2"))


# ------------------------------------------------------------------------------------------------ the step
def _tiny_parts(seed: int = 0) -> tuple[PersonaHead, Router, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    head = PersonaHead(16, hidden_dim=8)
    torch.nn.init.normal_(head.mlp[2].weight, std=0.1)  # non-zero, else the MLP's first layer gets no gradient
    embeddings = torch.randn(8, 16)
    labels = torch.tensor([[0.8, 0, 0, 0.5, -0.6]] * 3 + [[-0.7, 0.9, 0, 0, 0]] * 3 + [[0, 0, 0.9, 0, 0]] * 2)
    return head, Router(), embeddings, labels


def test_one_step_changes_every_head_and_router_parameter():
    head, router, embeddings, labels = _tiny_parts()
    params = dict(head.named_parameters()) | {f"router.{k}": v for k, v in router.named_parameters()}
    before = {k: v.detach().clone() for k, v in params.items()}
    optimizer = torch.optim.AdamW(params.values(), lr=1e-2)
    train_step(head, router, optimizer, embeddings, labels, [torch.arange(8)], RouterStageConfig())
    unchanged = [k for k, v in params.items() if torch.equal(v, before[k])]
    assert not unchanged


def test_batch_8_equals_batch_1_times_accumulation_8():
    grads = []
    for micro in ([torch.arange(8)], [torch.tensor([i]) for i in range(8)]):
        head, router, embeddings, labels = _tiny_parts()
        params = [*head.parameters(), *router.parameters()]
        optimizer = torch.optim.SGD(params, lr=0.0)  # keep the gradients, change nothing
        losses = train_step(head, router, optimizer, embeddings, labels, micro, RouterStageConfig())
        grads.append(([p.grad.clone() for p in params], losses))
    (big, big_losses), (small, small_losses) = grads
    assert big_losses == pytest.approx(small_losses, abs=1e-6)
    assert big_losses["loss_consistency"] > 0  # the in-batch term is really there
    for g_big, g_small in zip(big, small):
        assert torch.allclose(g_big, g_small, atol=1e-6)


def test_learning_rate_schedules():
    assert learning_rate(5, 10, 1e-3, "constant") == 1e-3
    assert learning_rate(0, 10, 1e-3, "cosine") == pytest.approx(1e-3)
    assert learning_rate(5, 10, 1e-3, "cosine") == pytest.approx(0.5e-3)


def test_shipped_router_config_is_valid():
    config = load_train_config(REPO / "configs" / "router-minilm.yaml")
    assert config.model.encoder == "minilm-l6"
    assert config.router == load_train_config().router  # the shipped weights use the defaults


def test_shipped_router_weights_fit_the_default_encoder():
    from personafuse.loading import shipped_router_weights

    path = shipped_router_weights("minilm-l6")
    assert path is not None, "src/personafuse/assets/router-minilm-l6.safetensors is missing"
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        assert handle.metadata()["encoder"] == "minilm-l6"
        assert tuple(handle.get_tensor("head.prototypes").shape) == (10, 384)
