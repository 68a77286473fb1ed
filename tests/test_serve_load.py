"""Bounded load and fault test on loopback: concurrent mixed clients, invalid requests, overload, disconnects.

N clients for a fixed time send streaming and non-streaming chat and text completions with random personas,
plus invalid requests; one client keeps dropping streams halfway. Checked: no 5xx but deliberate 503s (with
Retry-After), every valid request answered, every request accounted for, the dropped streams cancelled without
hurting anyone else, the queue empty at the end and the process' memory steady.
"""

from __future__ import annotations

import json
import random
import statistics
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx
import psutil
import pytest

from personafuse.serve import ServeSettings, create_app
from personafuse.serve.presets import PRESETS
from personafuse.traits import POLES
from serve_support import make_engine, running_server, shared_tiny_pf

CLIENTS = 6
DURATION_S = 4.0
TEXTS = ["my cat died and I am sad", "the server is down please help with the error", "what a great day we won",
         "tell me honestly what you think of my plan", "hello there how are you today"]  # fmt: skip


def random_persona(rng: random.Random):
    kind = rng.choice(["auto", "off", "gates", "activation", "preset"])
    if kind == "auto":
        return None
    if kind == "off":
        return "off"
    if kind == "gates":
        poles = rng.sample(POLES, 2)
        weight = round(rng.random(), 3)
        return {poles[0]: weight, poles[1]: round(1 - weight, 3)}
    if kind == "activation":
        return {"activation": {t: round(rng.uniform(-1, 1), 3) for t in "OCEAN"}}
    return rng.choice(sorted(PRESETS))


INVALID = [
    (b'{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "persona": {"A+": NaN}}', 400),
    (b'{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "persona": {"A+": -0.2}}', 400),
    (b'{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "persona": {"X+": 1}}', 400),
    (b'{"model": "gpt-x", "messages": [{"role": "user", "content": "hi"}]}', 404),
    (b'{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 100000}', 400),
    (b'{"model": "tiny", "messages": ', 400),
]


def one_request(client: httpx.Client, rng: random.Random) -> dict:
    """Send one random request; return what happened (never raises for HTTP-level outcomes)."""
    kind = rng.choices(["chat", "stream", "completion", "invalid"], weights=[4, 3, 2, 1])[0]
    start = time.perf_counter()
    if kind == "invalid":
        body, expected = rng.choice(INVALID)
        response = client.post("/v1/chat/completions", content=body, headers={"content-type": "application/json"})
        return {"kind": kind, "status": response.status_code, "expected": expected,
                "enveloped": "error" in response.json(), "latency": time.perf_counter() - start}  # fmt: skip
    persona = random_persona(rng)
    body: dict = {"model": "tiny", "max_tokens": rng.randint(4, 16), "temperature": rng.choice([0, 0, 0.8])}
    if isinstance(persona, str) and persona in PRESETS:
        body["model"] = PRESETS[persona].model_id
    elif persona is not None:
        body["persona"] = persona
    text = rng.choice(TEXTS)
    if kind == "completion":
        response = client.post("/v1/completions", json={**body, "prompt": text})
        out = {"kind": kind, "status": response.status_code, "latency": time.perf_counter() - start}
        out["retry_after"] = response.headers.get("retry-after")
        if response.status_code == 200:
            out["ok"] = "persona" in response.json() and len(response.json()["choices"]) == 1
        return out
    body["messages"] = [{"role": "user", "content": text}]
    if kind == "chat":
        response = client.post("/v1/chat/completions", json=body)
        out = {"kind": kind, "status": response.status_code, "latency": time.perf_counter() - start}
        out["retry_after"] = response.headers.get("retry-after")
        if response.status_code == 200:
            out["ok"] = response.json()["choices"][0]["finish_reason"] in ("stop", "length")
        return out
    with client.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as response:
        out = {"kind": kind, "status": response.status_code, "retry_after": response.headers.get("retry-after")}
        if response.status_code == 200:
            lines = [line for line in response.iter_lines() if line.startswith("data: ")]
            first = json.loads(lines[0][6:])
            out["ok"] = lines[-1] == "data: [DONE]" and "persona" in first and "error" not in lines[-2]
        else:
            response.read()
    out["latency"] = time.perf_counter() - start
    return out


def dropping_client(url: str, stop: threading.Event) -> int:
    """Open long streams and hang up after two events; return how many were dropped."""
    dropped = 0
    body = {"model": "tiny", "messages": [{"role": "user", "content": TEXTS[0]}], "max_tokens": 200,
            "temperature": 0, "stream": True}  # fmt: skip
    with httpx.Client(base_url=url, timeout=60) as client:
        while not stop.is_set():
            with client.stream("POST", "/v1/chat/completions", json=body) as response:
                if response.status_code != 200:
                    response.read()
                    time.sleep(0.05)
                    continue
                for index, _ in enumerate(response.iter_lines()):
                    if index >= 2:
                        break
            dropped += 1  # leaving the block closes the connection mid-stream
            time.sleep(0.1)
    return dropped


def test_load_mixed_clients_invalid_requests_overload_and_disconnects(tiny_base):
    pf = shared_tiny_pf(tiny_base)
    engine = make_engine(pf, max_batch=4, queue_size=4)
    process = psutil.Process()
    with running_server(create_app(engine, ServeSettings(model="tiny", timeout_s=60))) as (url, _):
        # deliberate overload: ten requests while the worker is held, four queue slots -> six 503s
        body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "temperature": 0}
        with ThreadPoolExecutor(10) as pool:
            with engine.paused():
                futures = [pool.submit(httpx.post, f"{url}/v1/chat/completions", json=body, timeout=60)
                           for _ in range(10)]  # fmt: skip
                while engine.stats.rejected < 6:
                    time.sleep(0.01)
            burst = [f.result() for f in futures]
        assert sorted(r.status_code for r in burst) == [200] * 4 + [503] * 6
        assert all(r.headers["retry-after"] == "1" for r in burst if r.status_code == 503)

        stop = threading.Event()
        results: list[dict] = []
        lock = threading.Lock()
        rss: list[int] = []

        def client_loop(seed: int) -> None:
            rng = random.Random(seed)
            with httpx.Client(base_url=url, timeout=60) as client:
                while not stop.is_set():
                    outcome = one_request(client, rng)
                    with lock:
                        results.append(outcome)
                    if outcome["status"] == 503:  # back off as Retry-After asks (scaled down for the test)
                        time.sleep(0.2)

        cancelled_before = engine.stats.cancelled
        with ThreadPoolExecutor(CLIENTS + 1) as pool:
            workers = [pool.submit(client_loop, seed) for seed in range(CLIENTS)]
            dropper = pool.submit(dropping_client, url, stop)
            started = time.perf_counter()
            while time.perf_counter() - started < DURATION_S:
                rss.append(process.memory_info().rss)
                time.sleep(0.25)
            stop.set()
            for worker in workers:
                worker.result()  # a client that raised (connection error, timeout) fails the test here
            dropped = dropper.result()
        elapsed = time.perf_counter() - started
        health = httpx.get(f"{url}/health").json()

    statuses = Counter(r["status"] for r in results)
    assert all(s < 500 or s == 503 for s in statuses), f"unexpected server errors: {statuses}"
    for r in results:
        if r["kind"] == "invalid":
            assert r["status"] == r["expected"] and r["enveloped"], r
        else:
            assert r["status"] in (200, 503), r
            assert r["status"] == 200 and r["ok"] or r["status"] == 503 and r["retry_after"] == "1", r
    kinds = Counter(r["kind"] for r in results if r["status"] == 200)
    assert min(kinds[k] for k in ("chat", "stream", "completion")) >= 3, kinds
    assert dropped >= 2
    assert engine.stats.cancelled > cancelled_before, "dropped streams must stop generating"
    assert health["pending"] == 0 and health["running_rows"] == 0
    half = len(rss) // 2
    growth_mb = (max(rss[half:]) - max(rss[:half])) / 2**20
    assert growth_mb < 64, f"RSS grew {growth_mb:.1f} MiB in the second half of the run"
    latencies = sorted(r["latency"] for r in results if r["status"] == 200 and r["kind"] != "invalid")
    p50 = statistics.median(latencies)
    p95 = latencies[int(0.95 * (len(latencies) - 1))]
    print(f"\nload: {len(results)} requests in {elapsed:.1f}s ({len(latencies) / elapsed:.1f} ok/s), statuses "
          f"{dict(statuses)}, p50 {p50 * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms, dropped streams {dropped}, "
          f"RSS second-half growth {growth_mb:.1f} MiB, batches {dict(engine.stats.batch_sizes)}")  # fmt: skip


if __name__ == "__main__":  # pragma: no cover
    pytest.main([__file__, "-s"])
