"""`personafuse bench`: every measurement, side by side in one process, with the bound next to each ratio."""

from __future__ import annotations

import importlib.metadata
import logging
import platform
import time
from dataclasses import asdict
from typing import Any

import torch

from personafuse.bench.config import BenchConfig

logger = logging.getLogger(__name__)

TARGETS = {
    "dense": 0.80,
    "top3": 0.90,
    "merged": 0.98,
}
"""Decode throughput targets vs base (issue 7)."""


def _versions() -> dict[str, str]:
    out = {}
    for name in ("torch", "transformers", "peft", "personafuse"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "unknown"
    return out


def run_bench(config: BenchConfig, progress=None) -> dict[str, Any]:
    """Run the whole benchmark and return a JSON-ready result.

    Args:
        config: what to measure.
        progress: optional callable(str) told about each section as it starts.
    """
    from personafuse.bench.decode import decode_throughput
    from personafuse.bench.latency import switching_costs, ttft_parts
    from personafuse.bench.memory import expert_memory
    from personafuse.bench.theory import adapter_bounds
    from personafuse.config import PersonaFuseConfig
    from personafuse.model import PersonaFuse
    from personafuse.moe.config import ExpertConfig

    say = progress or (lambda message: None)
    started = time.perf_counter()
    say(f"loading {config.model} with ten rank-{config.rank} experts on all projections")
    model_config = PersonaFuseConfig(base=config.model, encoder=config.encoder, dtype=config.dtype,
                                     experts=ExpertConfig(rank=config.rank, alpha=2.0 * config.rank))  # fmt: skip
    pf = PersonaFuse.create(config=model_config, device=config.device, init_b="random")
    result: dict[str, Any] = {
        "config": asdict(config),
        "environment": {
            "versions": _versions(),
            "python": platform.python_version(),
            "device": str(pf.device),
            "device_name": torch.cuda.get_device_name(0) if pf.device.type == "cuda" else platform.processor(),
            "threads": torch.get_num_threads(),
        },
        "model": {
            "name": config.model,
            "hidden_size": pf.model.config.hidden_size,
            "layers": pf.model.config.num_hidden_layers,
            "adapted_linears": sum(1 for _ in __import__("personafuse.moe", fromlist=["x"]).persona_layers(pf.model)),
        },
    }
    modes = [m for m in config.modes if m != "base"]
    xlora_model = None
    if "xlora" in modes:
        say("building PEFT X-LoRA over the same ten adapters")
        try:
            from personafuse.bench.xlora import build_xlora

            xlora_model = build_xlora(pf)
        except RuntimeError as exc:
            result["xlora_error"] = str(exc)
            modes.remove("xlora")
    bounds = adapter_bounds(pf.model, config.rank, {"dense": 10, "top3": 3, "merged": 0, "naive_loop": 10})
    result["bounds"] = bounds
    decode: dict[str, Any] = {}
    smallest = min(config.batch_sizes)
    for batch in config.batch_sizes:
        # X-LoRA has no KV cache: on a CPU one batch-8 measurement takes many minutes, so unless we are on a
        # GPU it is measured at the smallest batch only (its ratio there is the flattering one).
        batch_modes = [m for m in modes if m != "xlora" or batch == smallest or pf.device.type == "cuda"]
        say(f"decode throughput at batch {batch}: base, {', '.join(batch_modes)}")
        decode[str(batch)] = decode_throughput(pf, ["base", *batch_modes], batch, config.new_tokens,
                                               config.prompt_tokens, config.repeats, xlora_model=xlora_model)  # fmt: skip
    result["decode"] = decode
    del xlora_model
    say("time to first token and its parts")
    result["ttft"] = ttft_parts(pf, config.prompt_tokens, max(config.repeats, 3),
                                "My grandmother passed away last night and I keep replaying our last call.")  # fmt: skip
    say("cost of switching persona")
    result["switching"] = switching_costs(pf, max(config.repeats, 3))
    say("memory")
    result["memory"] = expert_memory(pf)
    say("training step time: stage 1 (ten hard-routed experts) vs a single LoRA")
    result["training"] = _training(pf, config)
    result["summary"] = summarise(result)
    result["wall_s"] = time.perf_counter() - started
    return result


def _training(pf, config: BenchConfig) -> dict[str, Any]:
    """Stage-1 step time (ten experts, each row hard-routed to another pole) vs one PEFT LoRA of the same rank.

    Runs last: its optimiser steps change the (random) experts, which no other measurement needs afterwards.
    """
    from personafuse.train.throughput import compare_with_single_lora, synthetic_batches

    batches = synthetic_batches(pf.model.config.vocab_size, batch_size=8, length=config.prompt_tokens,
                                count=config.train_steps + 1)  # fmt: skip
    return compare_with_single_lora(pf, batches, steps=config.train_steps, warmup=1).as_dict()


def summarise(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows of (measure, batch, value, bound, target, met) for the table."""
    rows = []
    for batch, modes in result.get("decode", {}).items():
        base = modes["base"]["tokens_per_s"]
        rows.append({"measure": "decode tokens/s base", "batch": int(batch), "value": base})
        for mode, data in modes.items():
            if mode == "base":
                continue
            row = {"measure": f"decode ratio {mode}/base", "batch": int(batch), "value": data["ratio_vs_base"]}
            if mode in result.get("bounds", {}):
                row["bound"] = result["bounds"][mode]["bound"] if mode != "merged" else 1.0
            if mode in TARGETS:
                row["target"] = TARGETS[mode]
                row["met"] = data["ratio_vs_base"] >= TARGETS[mode]
            rows.append(row)
        dense = modes.get("dense", {}).get("tokens_per_s")
        for peer, target in (("naive_loop", 1.4), ("xlora", 5.0)):
            if dense and peer in modes:
                speedup = dense / modes[peer]["tokens_per_s"]
                rows.append({"measure": f"dense speed-up vs {peer}", "batch": int(batch), "value": speedup,
                             "target": target, "met": speedup >= target})  # fmt: skip
    ttft = result.get("ttft")
    if ttft:
        share = ttft["routing_fold_share"]
        rows.append({"measure": "routing+fold share of TTFT", "batch": 1, "value": share, "target": 0.10,
                     "met": share <= 0.10})  # fmt: skip
    training = result.get("training", {})
    if "ratio" in training:
        rows.append({"measure": "stage-1 step time / single LoRA", "batch": training.get("batch_size", 0),
                     "value": training["ratio"], "target": 1.25, "met": training["ratio"] <= 1.25})  # fmt: skip
    return rows
