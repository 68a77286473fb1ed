"""Serving throughput on the real SmolLM2: batched distinct persona mixes vs identical mixes vs the base model,
and a short HTTP load test (p50 / p95 latency, throughput).

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/serve_throughput.py --max-tokens 32 --reps 3 --load-seconds 20

Part 1 drives :class:`HFEngine` directly (no HTTP): eight concurrent greedy requests, queued together so the
worker runs them as one batch of eight rows, under four persona settings:

- ``distinct-dense``: eight different automatically routed mixes (softmax gates, all ten experts non-zero:
  the layer's "stack" path, rank 10·r with per-row scales);
- ``distinct-sparse``: eight different presets / top-2 mixes (the "gather" path, one small LoRA per row);
- ``identical``: one dense mix for all eight rows (the "fold" path: one ordinary LoRA of rank 10·r);
- ``base``: ``persona="off"`` (the experts are skipped: the base model's cost).

plus ``sequential``: the same eight distinct dense requests one at a time (batch 1), to show what batching buys.
Experts get random B matrices (``init_b="random"``) so that mixes change the replies; compute does not
depend on the values. Part 2 runs the app under uvicorn on 127.0.0.1 and drives it with N clients sending
random personas (half streaming) for a fixed time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

PROMPTS = [
    "Write a long story about a lighthouse keeper who finds a message in a bottle.",
    "Explain in detail how a compiler turns source code into machine code.",
    "My grandmother passed away last night and I keep thinking about her garden.",
    "Our production database went down during the launch. Walk me through what to check.",
    "We just won the regional championship! Tell me everything we should do to celebrate.",
    "Give me brutally honest feedback on my plan to open a cafe next to three other cafes.",
    "Describe a day in the life of a medieval blacksmith, step by step.",
    "I have an exam tomorrow and I am panicking. Help me plan the evening.",
]
SPARSE = [{"A+": 0.6, "N-": 0.4}, {"C+": 0.7, "A-": 0.3}, {"E+": 0.5, "O+": 0.5}, {"O+": 1.0}, "grief-support",
          "code-review", "brainstorm", {"N-": 0.6, "C+": 0.4}]  # fmt: skip


def build_engine(model: str, max_batch: int, queue_size: int):
    from personafuse import PersonaFuse
    from personafuse.serve import HFEngine

    pf = PersonaFuse.create(base=model, encoder="minilm-l6", device="cpu", init_b="random")
    return HFEngine(pf, "smollm2", max_batch=max_batch, queue_size=queue_size, batch_wait_ms=5.0)


async def _run_once(engine, personas, max_tokens: int, together: bool) -> tuple[float, int, int]:
    """(seconds, completion tokens, generate calls) for eight requests, queued together or one by one."""
    from personafuse.serve.engine import Failed, Finished, GenerationJob, SamplingParams
    from personafuse.serve.protocol import parse_persona

    def job(prompt, persona):
        ids = engine.encode_chat([{"role": "user", "content": prompt}])
        return GenerationJob(ids, prompt, parse_persona(persona), SamplingParams(max_tokens, temperature=0.0))

    async def wait(handle) -> int:
        while True:
            event = await handle.next_event(600)
            if isinstance(event, Finished):
                return event.completion_tokens
            if isinstance(event, Failed):
                raise RuntimeError(event.message)

    jobs = [job(p, s) for p, s in zip(PROMPTS, personas)]
    batches = engine.stats.batches
    start = time.perf_counter()
    if together:
        with engine.paused():
            handles = [engine.submit([j]) for j in jobs]
        tokens = sum(await asyncio.gather(*(wait(h) for h in handles)))
    else:
        tokens = 0
        for j in jobs:
            tokens += await wait(engine.submit([j]))
    return time.perf_counter() - start, tokens, engine.stats.batches - batches


def batching_benchmark(engine, max_tokens: int, reps: int) -> dict:
    identical = engine.route([PROMPTS[0]], [_auto()])[0].gates
    modes = {
        "distinct-dense": ([None] * 8, True),
        "distinct-sparse": (SPARSE, True),
        "identical": ([identical] * 8, True),
        "base": (["off"] * 8, True),
        "sequential": ([None] * 8, False),
    }
    asyncio.run(_run_once(engine, ["off"] * 8, 4, True))  # warm-up
    results = {}
    for name, (personas, together) in modes.items():
        repeats = reps if together else 1  # batch-1 runs take eight times as long; one is enough
        runs = [asyncio.run(_run_once(engine, personas, max_tokens, together)) for _ in range(repeats)]
        seconds = statistics.median(r[0] for r in runs)
        tokens = statistics.median(r[1] for r in runs)
        results[name] = {"seconds": round(seconds, 3), "completion_tokens": tokens,
                         "tokens_per_s": round(tokens / seconds, 1), "generate_calls": runs[0][2],
                         "rows_x_steps_per_s": round(8 * max_tokens / seconds, 1)}  # fmt: skip
        print(f"{name:16s} {seconds:7.2f} s  {tokens:5.0f} tok  {tokens / seconds:7.1f} tok/s  "
              f"{runs[0][2]} generate call(s)", flush=True)  # fmt: skip
    base = results["base"]["rows_x_steps_per_s"]
    for name in results:
        results[name]["speed_vs_base"] = round(results[name]["rows_x_steps_per_s"] / base, 3)
    return results


def _auto():
    from personafuse.serve.protocol import PersonaChoice

    return PersonaChoice.auto()


def load_benchmark(engine, clients: int, seconds: float, max_tokens: int) -> dict:
    import httpx
    import uvicorn

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from personafuse.serve import ServeSettings, create_app
    from personafuse.serve.presets import PRESETS
    from serve_support import free_port

    settings = ServeSettings(model="smollm2", timeout_s=120)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(engine, settings), host="127.0.0.1", port=port,
                                           log_level="warning"))  # fmt: skip
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    url = f"http://127.0.0.1:{port}"
    stop = threading.Event()
    records: list[tuple[float, int, int]] = []
    lock = threading.Lock()

    def client(seed: int) -> None:
        rng = random.Random(seed)
        with httpx.Client(base_url=url, timeout=300) as http:
            while not stop.is_set():
                body = {"model": "smollm2", "max_tokens": max_tokens, "temperature": 0,
                        "messages": [{"role": "user", "content": rng.choice(PROMPTS)}]}  # fmt: skip
                persona = rng.choice([None, "off", {"A+": 0.7, "N-": 0.3}, {"activation": {"C": 0.9}},
                                      *sorted(PRESETS)])  # fmt: skip
                if isinstance(persona, str) and persona in PRESETS:
                    body["model"] = PRESETS[persona].model_id
                elif persona is not None:
                    body["persona"] = persona
                start = time.perf_counter()
                if rng.random() < 0.5:
                    body["stream"] = True
                    body["stream_options"] = {"include_usage": True}
                    tokens = 0
                    with http.stream("POST", "/v1/chat/completions", json=body) as response:
                        status = response.status_code
                        for line in response.iter_lines():
                            if line.startswith("data: {") and '"usage"' in line:
                                tokens = json.loads(line[6:])["usage"]["completion_tokens"]
                else:
                    response = http.post("/v1/chat/completions", json=body)
                    status = response.status_code
                    tokens = response.json()["usage"]["completion_tokens"] if status == 200 else 0
                with lock:
                    records.append((time.perf_counter() - start, status, tokens))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    begin = time.perf_counter()
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - begin
    server.should_exit = True
    thread.join(30)
    ok = sorted(r[0] for r in records if r[1] == 200)
    statuses: dict[int, int] = {}
    for _, status, _ in records:
        statuses[status] = statuses.get(status, 0) + 1
    result = {
        "clients": clients,
        "seconds": round(elapsed, 1),
        "requests": len(records),
        "statuses": statuses,
        "p50_s": round(statistics.median(ok), 3),
        "p95_s": round(ok[int(0.95 * (len(ok) - 1))], 3),
        "requests_per_s": round(len(ok) / elapsed, 2),
        "completion_tokens_per_s": round(sum(r[2] for r in records) / elapsed, 1),
        "batch_sizes": dict(sorted(engine.stats.batch_sizes.items())),
    }
    print(f"load: {json.dumps(result)}", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--load-seconds", type=float, default=20.0)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    parser.add_argument("--skip-batching", action="store_true", help="run only the load test")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    engine = build_engine(args.model, max_batch=8, queue_size=64)
    engine.start()
    print(f"torch threads {torch.get_num_threads()}, max_tokens {args.max_tokens}, reps {args.reps}", flush=True)
    results: dict = {}
    if not args.skip_batching:
        results["batching"] = batching_benchmark(engine, args.max_tokens, args.reps)
        results["ratios"] = _ratios(results["batching"])
        print(f"time ratios: {json.dumps(results['ratios'])}", flush=True)
    if args.load_seconds > 0:
        results["load"] = load_benchmark(engine, args.clients, args.load_seconds, args.max_tokens)
    engine.shutdown(60)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


def _ratios(b: dict) -> dict:
    """Wall-time ratios between the batching modes (> 1: the first is slower)."""
    return {
        "distinct_dense_vs_identical": round(b["distinct-dense"]["seconds"] / b["identical"]["seconds"], 3),
        "distinct_sparse_vs_identical": round(b["distinct-sparse"]["seconds"] / b["identical"]["seconds"], 3),
        "distinct_dense_vs_base": round(b["distinct-dense"]["seconds"] / b["base"]["seconds"], 3),
        "identical_vs_base": round(b["identical"]["seconds"] / b["base"]["seconds"], 3),
        "sequential_vs_batched_distinct": round(b["sequential"]["seconds"] / b["distinct-dense"]["seconds"], 3),
    }


if __name__ == "__main__":
    main()
