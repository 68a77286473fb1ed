"""`personafuse export`: folding maths, k-means, merged model and prototype adapters vs the routed model, sidecar.

Exactness checks compare logits of plain transformers / plain PEFT loads of the exported folders with the
PersonaFuse model run with the same gates (atol 1e-4), on the tiny random Llama with random (non-zero) experts.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from personafuse.export import (
    active_experts,
    cluster_gates,
    corpus_contexts,
    fold_mix,
    kmeans,
    nearest,
    vllm_max_lora_rank,
)
from personafuse.moe import persona_layers
from personafuse.traits import POLES

SEED = Path(__file__).resolve().parents[1] / "data" / "seed"
PROMPTS = [
    [{"role": "user", "content": "my cat died and I am sad"}],
    [{"role": "system", "content": "be brief"}, {"role": "user", "content": "the server is down please help"}],
]


# ---------------------------------------------------------------- pure maths
def test_fold_mix_stacks_active_experts_and_scales_b_by_gate_times_alpha_over_r():
    # r = 1, in = out = 2. Expert e has A_e = [e, 1] and B_e = [[1], [e]]. Gates 0.5 on expert 1 and 0.25 on
    # expert 9, scaling 2: A_fold = [A_1; A_9] = [[1, 1], [9, 1]] and B_fold = [2*0.5*B_1, 2*0.25*B_9]
    # = [[1, 0.5], [1, 4.5]]; B_fold A_fold = 2*(0.5 B_1 A_1 + 0.25 B_9 A_9).
    a = torch.tensor([[float(e), 1.0] for e in range(10)])  # [10, 2]
    b = torch.stack([torch.ones(10), torch.arange(10.0)])  # [2, 10]
    gates = torch.zeros(10)
    gates[1], gates[9] = 0.5, 0.25
    a_fold, b_fold = fold_mix(a, b, gates, rank=1, scaling=2.0)
    assert torch.equal(a_fold, torch.tensor([[1.0, 1.0], [9.0, 1.0]]))
    assert torch.equal(b_fold, torch.tensor([[1.0, 0.5], [1.0, 4.5]]))
    expected = 2.0 * (0.5 * b[:, 1:2] @ a[1:2] + 0.25 * b[:, 9:10] @ a[9:10])
    assert torch.allclose(b_fold @ a_fold, expected)


def test_fold_mix_with_rank_2_keeps_each_experts_block_together():
    r, d = 2, 3
    generator = torch.Generator().manual_seed(0)
    a, b = torch.randn(10 * r, d, generator=generator), torch.randn(d, 10 * r, generator=generator)
    gates = torch.tensor([0.0, 0.2, 0.0, 0.0, 0.0, 0.0, 0.7, 0.0, 0.0, 0.1])
    a_fold, b_fold = fold_mix(a, b, gates, rank=r, scaling=0.5)
    assert a_fold.shape == (3 * r, d) and b_fold.shape == (d, 3 * r)
    naive = sum(0.5 * gates[e] * b[:, e * r : (e + 1) * r] @ a[e * r : (e + 1) * r] for e in range(10))
    assert torch.allclose(b_fold @ a_fold, naive, atol=1e-6)


def test_fold_mix_of_zero_gates_is_a_rank_r_no_op():
    a_fold, b_fold = fold_mix(torch.ones(20, 3), torch.ones(3, 20), torch.zeros(10), rank=2, scaling=1.0)
    assert a_fold.shape == (2, 3) and torch.equal(b_fold, torch.zeros(3, 2))


def test_active_experts_and_bad_gates():
    assert active_experts(torch.tensor([0, 0.7, 0, 0, 0, 0, 0, 0, 0, 0.3])) == [1, 9]
    with pytest.raises(ValueError, match=r"gates must be finite and >= 0"):
        active_experts(torch.tensor([-0.1] + [0.0] * 9))
    with pytest.raises(ValueError, match=r"gates must have shape \[10\]"):
        active_experts(torch.zeros(5))


def test_vllm_max_lora_rank_rounds_up_to_an_allowed_value():
    assert [vllm_max_lora_rank(r) for r in (1, 8, 9, 40, 80, 320, 400)] == [8, 8, 16, 64, 128, 320, 512]
    with pytest.raises(ValueError, match="exceeds vLLM's largest --max-lora-rank 512"):
        vllm_max_lora_rank(513)


def test_kmeans_finds_two_obvious_groups_ordered_by_size_then_centroid():
    # Groups {0, 0, 1} (mean 1/3) and {10, 11, 12, 13} (mean 11.5): the bigger group comes first.
    points = torch.tensor([[0.0], [0.0], [1.0], [10.0], [11.0], [12.0], [13.0]])
    result = kmeans(points, 2, seed=3)
    assert torch.allclose(result.centroids, torch.tensor([[11.5], [1 / 3]]))
    assert result.labels.tolist() == [1, 1, 1, 0, 0, 0, 0]
    assert result.inertia == pytest.approx(2 / 3 + 5.0)  # (1/9+1/9+4/9) + (2.25+0.25+0.25+2.25)
    assert torch.equal(nearest(points, result.centroids), result.labels)


def test_kmeans_is_seeded_and_k1_is_the_mean():
    points = torch.rand(50, 10, generator=torch.Generator().manual_seed(1))
    first, second = kmeans(points, 4, seed=7), kmeans(points, 4, seed=7)
    assert torch.equal(first.centroids, second.centroids) and torch.equal(first.labels, second.labels)
    assert torch.allclose(kmeans(points, 1).centroids[0], points.mean(dim=0), atol=1e-6)
    with pytest.raises(ValueError, match=r"k must be an integer in 1..2 \(the number of distinct points\), got 3"):
        kmeans(torch.tensor([[0.0], [0.0], [1.0]]), 3)


def test_cluster_gates_rejects_k_beyond_distinct_routings():
    from personafuse.errors import UserError

    gates = torch.tensor([[1.0] + [0.0] * 9, [0.0, 1.0] + [0.0] * 8])
    prototypes, labels = cluster_gates(gates, 2)
    assert [p.name for p in prototypes] == ["persona-00", "persona-01"] and sorted(labels.tolist()) == [0, 1]
    with pytest.raises(UserError, match=r"--prototypes 3 must be in 1..2"):
        cluster_gates(gates, 3)


# ---------------------------------------------------------------- the tiny model
@pytest.fixture(scope="module")
def pf(tiny_pf_factory):
    return tiny_pf_factory()  # random (non-zero) experts of rank 4: the exactness checks are not vacuous


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory) -> Path:
    """Three real records of each seed-corpus domain (36 contexts): quick to embed, still varied."""
    folder = tmp_path_factory.mktemp("corpus")
    lines = []
    for file in sorted(SEED.glob("*.jsonl")):
        lines.extend(file.read_text().splitlines()[:3])
    (folder / "seed_subset.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def _routed_logits(pf, gates: torch.Tensor) -> torch.Tensor:
    inputs = pf.chat_inputs(PROMPTS)
    with pf.using_gates(gates.expand(len(PROMPTS), -1)), torch.no_grad():
        return pf.model(**inputs).logits


def _plain_logits(model, pf) -> torch.Tensor:
    with torch.no_grad():
        return model(**pf.chat_inputs(PROMPTS)).logits


def _cli(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    from personafuse.cli import main

    monkeypatch.setattr(sys, "argv", ["personafuse", "export", *args])
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_merged_export_loads_in_plain_transformers_with_the_routed_logits(pf, tmp_path, monkeypatch, capsys):
    from transformers import AutoModelForCausalLM

    monkeypatch.setattr("personafuse.loading.load_model", lambda spec, device=None: pf)
    out = tmp_path / "merged"
    code, stdout, stderr = _cli(monkeypatch, capsys, "--model", "ckpt", "--out", str(out), "--merged",
                                "--persona", "A+=0.7,N-=0.3", "--json")  # fmt: skip
    assert code == 0, stderr
    report = json.loads(stdout)
    assert report["kind"] == "merged" and report["gates"]["A+"] == pytest.approx(0.7)
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    gates = torch.zeros(10)
    gates[POLES.index("A+")], gates[POLES.index("N-")] = 0.7, 0.3
    routed = _routed_logits(pf, gates)
    torch.testing.assert_close(_plain_logits(model, pf), routed, atol=1e-4, rtol=0)
    with pf.experts_disabled(), torch.no_grad():
        base = pf.model(**pf.chat_inputs(PROMPTS)).logits
    assert (routed - base).abs().max() > 1e-3, "the experts must change the logits, or the check is vacuous"
    info = json.loads((out / "personafuse_export.json").read_text())
    assert info["kind"] == "merged" and info["gates"]["N-"] == pytest.approx(0.3)
    assert (out / "tokenizer_config.json").is_file()
    assert pf.state.gates is None, "the export must leave the model's gates alone"
    assert all(layer.merged_gates is None for _, layer in persona_layers(pf.model)), "and its weights unmerged"


@pytest.fixture(scope="module")
def prototype_export(pf, small_corpus, tmp_path_factory):
    from personafuse.export import export_prototypes

    return export_prototypes(pf, small_corpus, tmp_path_factory.mktemp("protos") / "out", k=3, seed=0)


def test_each_prototype_adapter_in_plain_peft_reproduces_the_routed_mix(pf, prototype_export, tiny_base):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    spec = json.loads((prototype_export.folder / "router.json").read_text())
    assert [p["name"] for p in spec["prototypes"]] == ["persona-00", "persona-01", "persona-02"]
    assert sum(p["size"] for p in spec["prototypes"]) == 36
    assert 0.0 <= spec["fit"]["mean_l1_to_prototype"] <= spec["fit"]["max_l1_to_prototype"] <= 2.0
    r = pf.config.experts.rank
    for entry in spec["prototypes"]:
        folder = prototype_export.folder / entry["path"]
        config = json.loads((folder / "adapter_config.json").read_text())
        assert config["r"] == config["lora_alpha"] == entry["rank"] <= 10 * r
        gates = torch.tensor([entry["gates"][pole] for pole in POLES])
        assert gates.sum() == pytest.approx(1.0, abs=1e-4)
        assert entry["rank"] == r * int((gates > 0).sum())
        base = AutoModelForCausalLM.from_pretrained(tiny_base).eval()
        model = PeftModel.from_pretrained(base, str(folder)).eval()
        torch.testing.assert_close(_plain_logits(model, pf), _routed_logits(pf, gates), atol=1e-4, rtol=0)
    assert spec["vllm_max_lora_rank"] == vllm_max_lora_rank(spec["max_rank"])
    command = prototype_export.vllm_command()
    assert command.startswith(f"vllm serve {tiny_base} --enable-lora --max-lora-rank ")
    assert "persona-02=" in command


def test_sidecar_picks_the_prototype_nearest_to_personafuse_routing(pf, prototype_export, small_corpus):
    folder = prototype_export.folder
    spec = importlib.util.spec_from_file_location("exported_sidecar", folder / "sidecar_router.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    imported = {
        alias.name if isinstance(node, ast.Import) else node.module
        for node in ast.walk(ast.parse((folder / "sidecar_router.py").read_text()))
        if isinstance(node, (ast.Import, ast.ImportFrom))
        for alias in (node.names if isinstance(node, ast.Import) else [node])
    }
    assert not any(name.startswith("personafuse") for name in imported), f"the sidecar must stand alone: {imported}"
    sidecar = module.SidecarRouter(folder, encoder=pf.persona_router.encoder)
    texts = corpus_contexts(small_corpus)[:12] + ["we won the cup!!", "I feel numb since the funeral"]
    _, routed = pf.persona_router.activations_and_gates(texts)
    torch.testing.assert_close(sidecar.gates(texts), routed, atol=1e-5, rtol=0)
    prototype_gates = torch.tensor([p.gates for p in prototype_export.prototypes], dtype=torch.float64)
    expected = [prototype_export.prototypes[i].name for i in nearest(routed.double(), prototype_gates).tolist()]
    assert sidecar.choose_texts(texts) == expected
    assert len(set(expected)) > 1, "a varied corpus should reach more than one prototype"
    body = sidecar.rewrite({"model": "auto", "messages": [{"role": "system", "content": "x"}, *PROMPTS[0]]})
    assert body["model"] == sidecar.choose([PROMPTS[0]])[0] and body["messages"][0]["content"] == "x"


def test_prototype_cli_on_a_checkpoint_writes_adapters_router_and_sidecar(pf, small_corpus, tmp_path,
                                                                          monkeypatch, capsys):  # fmt: skip
    ckpt = tmp_path / "ckpt"
    pf.save_pretrained(ckpt)
    out = tmp_path / "protos"
    code, stdout, stderr = _cli(monkeypatch, capsys, "--model", str(ckpt), "--out", str(out), "--prototypes", "2",
                                "--corpus", str(small_corpus), "--json")  # fmt: skip
    assert code == 0, stderr
    report = json.loads(stdout)
    assert [p["name"] for p in report["prototypes"]] == ["persona-00", "persona-01"]
    assert "--enable-lora" in report["vllm_command"] and "--max-lora-rank" in report["vllm_command"]
    assert sorted(p.name for p in out.iterdir()) == ["adapters", "router.json", "router.safetensors",
                                                     "sidecar_router.py"]  # fmt: skip
    assert sorted(p.name for p in (out / "adapters").iterdir()) == ["persona-00", "persona-01"]
    code, _, stderr = _cli(monkeypatch, capsys, "--model", str(ckpt), "--out", str(out), "--prototypes", "2",
                           "--corpus", str(small_corpus))  # fmt: skip
    assert code == 2 and "already exists and is not empty" in stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--out", "X", "--prototypes", "0", "--corpus", "data/seed"], "--prototypes must be >= 1, got 0"),
        (["--out", "X", "--prototypes", "2", "--corpus", "/nonexistent"], "--corpus /nonexistent does not exist"),
        (["--out", "X", "--prototypes", "2"], "--prototypes needs --corpus"),
        (["--out", "X", "--merged"], "--merged needs --persona"),
        (["--out", "X", "--merged", "--persona", "Q+=1"], r"unknown pole\(s\) \['Q\+'\]"),
        (["--out", "X", "--merged", "--persona", "A+0.7"], "lacks '='"),
        (["--out", "X"], "choose one export"),
        (["--merged", "--persona", "A+=1"], "--out is required"),
        (["--out", "X", "--prototypes", "2", "--corpus", "data/seed", "--persona", "A+=1"], "--persona applies to"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, message, monkeypatch, capsys, tmp_path):
    monkeypatch.chdir(Path(__file__).resolve().parents[1])

    def no_model(*_, **__):
        raise AssertionError("bad input must be refused before loading a model")

    monkeypatch.setattr("personafuse.loading.load_model", no_model)
    code, _, stderr = _cli(monkeypatch, capsys, *args)
    assert code == 2
    assert stderr.strip().count("\n") == 0, stderr
    assert re.search(message, stderr), stderr


def test_bad_input_in_a_real_process_exits_2_with_one_line():
    result = subprocess.run([sys.executable, "-m", "personafuse.cli", "export", "--out", "x", "--merged"],
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode == 2
    assert (
        result.stderr.strip()
        == "error: --merged needs --persona, the fixed mix to merge, e.g. --persona 'A+=0.7,N-=0.3'"
    )
