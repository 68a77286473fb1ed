"""Time to first token and its parts, and the cost of switching persona between requests.

TTFT = encoder + head + router (routing) + preparing the gates' matrices (fold) + prefill. Medians over
interleaved repeats; each part is timed on its own so the shares add up to (about) the whole.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

from personafuse.bench.decode import make_prompts, mode_gates
from personafuse.moe.inject import persona_layers


def _median_time(fn: Callable[[], object], repeats: int, sync: Callable[[], None]) -> float:
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _prepare_all(pf) -> None:
    """Build every layer's prepared matrices for the current gates (what the first forward would do)."""
    for _, layer in persona_layers(pf.model):
        layer._prepared, layer._prepared_version = layer._prepare(), pf.state.version


def ttft_parts(pf, prompt_tokens: int, repeats: int, text: str) -> dict[str, float]:
    """Seconds for routing, fold (prepare) and prefill at batch 1, and routing + fold as a share of TTFT."""
    sync = torch.cuda.synchronize if pf.device.type == "cuda" else (lambda: None)
    prompts = {k: v.to(pf.device) for k, v in make_prompts(pf.tokenizer, 1, prompt_tokens).items()}
    routing = _median_time(lambda: pf.persona_router.activations_and_gates([text]), repeats, sync)
    gates = mode_gates("dense", 1).to(pf.device)
    with torch.no_grad():

        def fold() -> None:
            pf.state.set(gates)
            _prepare_all(pf)

        fold_time = _median_time(fold, repeats, sync)
        pf.state.set(gates)
        _prepare_all(pf)
        prefill = _median_time(lambda: pf.model(**prompts, use_cache=True), repeats, sync)
        pf.state.set(None)
        with pf.experts_disabled():
            base_prefill = _median_time(lambda: pf.model(**prompts, use_cache=True), repeats, sync)
    total = routing + fold_time + prefill
    return {
        "routing_s": routing,
        "fold_s": fold_time,
        "prefill_s": prefill,
        "base_prefill_s": base_prefill,
        "ttft_s": total,
        "routing_fold_share": (routing + fold_time) / total,
    }


def switching_costs(pf, repeats: int) -> dict[str, float]:
    """Seconds to switch persona: re-fold (set new gates + prepare), and merge + unmerge a fixed persona."""
    sync = torch.cuda.synchronize if pf.device.type == "cuda" else (lambda: None)
    first, second = mode_gates("dense", 1, seed=1).to(pf.device), mode_gates("dense", 1, seed=2).to(pf.device)
    with torch.no_grad():

        def refold() -> None:
            for gates in (first, second):
                pf.state.set(gates)
                _prepare_all(pf)

        fold = _median_time(refold, repeats, sync) / 2
        pf.state.set(None)
        merge_times, unmerge_times = [], []
        for _ in range(repeats):
            for action, times in ((lambda: pf.merge(first[0]), merge_times), (pf.unmerge, unmerge_times)):
                sync()
                start = time.perf_counter()
                action()
                sync()
                times.append(time.perf_counter() - start)
    return {
        "fold_switch_s": fold,
        "merge_s": statistics.median(merge_times),
        "unmerge_s": statistics.median(unmerge_times),
    }
