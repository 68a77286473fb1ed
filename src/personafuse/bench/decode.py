"""Decode throughput of each mode against the base, measured side by side and interleaved in one process.

decode tokens/s = batch · (N − 1) / (t(generate N tokens) − t(generate 1 token)), KV cache on, greedy, with
``min_new_tokens = N`` so every mode decodes the same number of tokens. Modes:

- ``base``: experts disabled (the frozen model alone);
- ``dense``: all ten experts, a distinct softmax mix per row;
- ``top3``: the top-3 experts per row (folded: rank 3r per row);
- ``merged``: one fixed persona merged into the weights;
- ``naive_loop``: the dense mix computed expert by expert (PEFT-style), see :mod:`personafuse.bench.naive`;
- ``xlora``: PEFT's X-LoRA over the same ten adapters (the peer), see :mod:`personafuse.bench.xlora`.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch

from personafuse.routing.router import gates_from_logits

XLORA_MAX_TOKENS = 8
"""Decoded tokens per X-LoRA measurement (it has no KV cache; see :func:`decode_throughput`)."""


def make_prompts(tokenizer, batch: int, prompt_tokens: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """``batch`` random prompts of exactly ``prompt_tokens`` tokens (no padding, so modes see equal work)."""
    generator = torch.Generator().manual_seed(seed)
    high = min(len(tokenizer), 30000)
    ids = torch.randint(100, high, (batch, prompt_tokens), generator=generator)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def mode_gates(mode: str, batch: int, seed: int = 0) -> torch.Tensor:
    """Distinct gates per row for a mode: dense softmax, or top-3."""
    logits = torch.randn(batch, 10, generator=torch.Generator().manual_seed(seed)) * 2
    return gates_from_logits(logits, top_k=3 if mode == "top3" else None)


@contextlib.contextmanager
def mode_context(pf, mode: str, batch: int, xlora_model=None) -> Iterator[Any]:
    """Set up ``mode`` on ``pf`` and yield the model whose ``generate`` to time."""
    from personafuse.bench.naive import naive_expert_loop

    if mode == "base":
        with pf.experts_disabled():
            yield pf.model
    elif mode in ("dense", "top3"):
        with pf.using_gates(mode_gates(mode, batch).to(pf.device)):
            yield pf.model
    elif mode == "merged":
        pf.merge(mode_gates("dense", 1)[0])
        try:
            yield pf.model
        finally:
            pf.unmerge()
    elif mode == "naive_loop":
        with pf.using_gates(mode_gates("dense", batch).to(pf.device)), naive_expert_loop(pf.model):
            yield pf.model
    elif mode == "xlora":
        yield xlora_model
    else:  # validated by BenchConfig
        raise ValueError(mode)


def _timed(fn: Callable[[], Any], sync: Callable[[], None]) -> float:
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def decode_throughput(pf, modes: list[str], batch: int, new_tokens: int, prompt_tokens: int, repeats: int,
                      xlora_model=None) -> dict[str, dict[str, float]]:  # fmt: skip
    """Median decode tokens/s per mode and its ratio to ``base``, interleaving modes in every repeat."""
    prompts = {k: v.to(pf.device) for k, v in make_prompts(pf.tokenizer, batch, prompt_tokens).items()}
    sync = torch.cuda.synchronize if pf.device.type == "cuda" else (lambda: None)
    pad = pf.tokenizer.pad_token_id

    def generate(model, n: int) -> None:
        cache = model is not xlora_model  # X-LoRA refuses the KV cache
        with torch.no_grad():
            model.generate(**prompts, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=pad,
                           use_cache=cache)  # fmt: skip

    order = ["base", *[m for m in modes if m != "base"]]
    # X-LoRA decodes without a KV cache (each token recomputes the prefix twice), so it gets at most
    # XLORA_MAX_TOKENS: a shorter run flatters it (less prefix to recompute), never the other way round.
    tokens = {m: min(new_tokens, XLORA_MAX_TOKENS) if m == "xlora" else new_tokens for m in order}
    samples: dict[str, list[float]] = {m: [] for m in order}
    for mode in order:  # warm-up at full length: allocator, kernels, prepared matrices, GPU clocks
        with mode_context(pf, mode, batch, xlora_model) as model:
            generate(model, tokens[mode])
    for _ in range(repeats):
        for mode in order:
            n = tokens[mode]
            with mode_context(pf, mode, batch, xlora_model) as model:
                full = _timed(lambda model=model, n=n: generate(model, n), sync)
                first = _timed(lambda model=model: generate(model, 1), sync)
            samples[mode].append(batch * (n - 1) / max(full - first, 1e-9))
    medians = {m: statistics.median(v) for m, v in samples.items()}
    return {m: {"tokens_per_s": medians[m], "ratio_vs_base": medians[m] / medians["base"],
                "new_tokens": tokens[m], "samples": samples[m]} for m in order}  # fmt: skip
