"""The batching engine over the tiny real model: distinct mixes in one forward batch, equal to running alone."""

from __future__ import annotations

import asyncio
from collections import defaultdict

import pytest
import torch

from personafuse.serve.engine import (
    Delta,
    EngineOverloaded,
    Failed,
    Finished,
    GenerationJob,
    SamplingParams,
    Started,
)
from personafuse.serve.protocol import parse_persona
from serve_support import make_engine, shared_tiny_pf

TEXTS = [
    "my cat died and I am sad",
    "the server is down please help with the error",
    "what a great day we won the game",
    "tell me honestly what you think of my plan",
    "hello there how are you today",
    "my cat died and the server is down",
    "we won the game tell me honestly",
    "hello how are you, what do you think of my plan",
]
PERSONAS = [{"A+": 1.0}, {"N-": 0.5, "C+": 0.5}, "off", None, {"E+": 0.3}, {"O-": 1.0}, {"activation": {"A": 0.9}},
            "grief-support"]  # fmt: skip


@pytest.fixture(scope="module")
def pf(tiny_base):
    return shared_tiny_pf(tiny_base)


@pytest.fixture()
def engine(pf):
    engine = make_engine(pf)
    engine.start()
    yield engine
    engine.shutdown(10)


def job(engine, text, persona=None, stream=False, **params) -> GenerationJob:
    params.setdefault("max_tokens", 12)
    params.setdefault("temperature", 0.0)
    conv = [{"role": "user", "content": text}]
    return GenerationJob(engine.encode_chat(conv), text, parse_persona(persona), SamplingParams(**params), stream)


async def collect(handle, timeout: float = 30.0) -> dict:
    """Every event of one request: routing per job, final result and streamed text per (job, choice)."""
    out: dict = {"persona": {}, "finished": {}, "streamed": defaultdict(str)}
    expected = sum(j.params.n for j in handle.jobs)
    while len(out["finished"]) < expected:
        event = await handle.next_event(timeout)
        if isinstance(event, Started):
            out["persona"][event.job] = event.persona
        elif isinstance(event, Delta):
            out["streamed"][(event.job, event.choice)] += event.text
        elif isinstance(event, Finished):
            out["finished"][(event.job, event.choice)] = event
        elif isinstance(event, Failed):
            out["failed"] = event.message
            return out
    return out


def test_eight_distinct_mixes_run_in_one_forward_batch_and_match_running_alone(engine, pf):
    async def scenario():
        jobs = [job(engine, t, p) for t, p in zip(TEXTS, PERSONAS)]
        with engine.paused():  # queue all eight before the worker looks: one batch, deterministically
            handles = [engine.submit([j]) for j in jobs]
            before = engine.stats.batches
        together = await asyncio.gather(*(collect(h) for h in handles))
        assert engine.stats.batches == before + 1, "the eight requests must share one generate call"
        assert engine.stats.last_batch_rows == 8
        assert engine.stats.last_batch_mixes == 8, "each row keeps its own mix"
        alone = []
        for t, p in zip(TEXTS, PERSONAS):
            alone.append(await collect(engine.submit([job(engine, t, p)])))
        assert engine.stats.batches == before + 9
        return together, alone

    together, alone = asyncio.run(scenario())
    for i, (a, b) in enumerate(zip(together, alone)):
        batched, single = a["finished"][(0, 0)], b["finished"][(0, 0)]
        assert batched.text == single.text, f"row {i} ({PERSONAS[i]}) differs when batched"
        assert batched.completion_tokens == single.completion_tokens
        assert a["persona"][0] == b["persona"][0]
    reports = [r["persona"][0] for r in together]
    assert [r.source for r in reports] == ["gates", "gates", "off", "auto", "gates", "gates", "activation", "preset"]
    assert sum(reports[2].gates.values()) == 0 and reports[2].activations is None
    assert reports[3].activations is not None and abs(sum(reports[3].gates.values()) - 1) < 1e-4
    # the engine's reply is the library's reply for the same gates (same tokens, same model path)
    for i in (0, 3, 6):
        gates = torch.tensor([list(reports[i].gates.values())])
        expected = pf.generate([[{"role": "user", "content": TEXTS[i]}]], persona=gates, max_new_tokens=12,
                               do_sample=False)[0]  # fmt: skip
        assert together[i]["finished"][(0, 0)].text == expected


def test_incompatible_settings_are_grouped_into_separate_batches(engine):
    async def scenario():
        with engine.paused():
            greedy = [engine.submit([job(engine, t, {"A+": 1.0})]) for t in TEXTS[:4]]
            sampled = [engine.submit([job(engine, t, temperature=0.8)]) for t in TEXTS[4:6]]
            seeded = [engine.submit([job(engine, TEXTS[6], temperature=0.8, seed=1)])]
            before = engine.stats.batch_sizes.copy()
        await asyncio.gather(*(collect(h) for h in greedy + sampled + seeded))
        return engine.stats.batch_sizes - before

    assert asyncio.run(scenario()) == {4: 1, 2: 1, 1: 1}


def test_seeded_sampling_is_reproducible(engine):
    async def scenario():
        runs = []
        for seed in (7, 7, 8):
            runs.append(
                await collect(engine.submit([job(engine, TEXTS[0], temperature=1.0, seed=seed, max_tokens=16)]))
            )
        return [r["finished"][(0, 0)].text for r in runs]

    first, again, other = asyncio.run(scenario())
    assert first == again
    assert first != other


def test_batched_streaming_deltas_add_up_to_each_final_reply(engine):
    async def scenario():
        with engine.paused():
            handles = [engine.submit([job(engine, t, p, stream=True, n=2 if i == 0 else 1)])
                       for i, (t, p) in enumerate(zip(TEXTS[:4], PERSONAS[:4]))]  # fmt: skip
        return await asyncio.gather(*(collect(h) for h in handles))

    results = asyncio.run(scenario())
    assert len(results[0]["finished"]) == 2
    for result in results:
        for key, finished in result["finished"].items():
            assert result["streamed"][key] == finished.text
            assert finished.completion_tokens == 12 or finished.finish_reason == "stop"


def test_stop_sequences_cut_the_reply_before_the_first_match(engine):
    async def run(**params):
        out = await collect(engine.submit([job(engine, TEXTS[1], {"C+": 1.0}, max_tokens=24, **params)]))
        return out["finished"][(0, 0)], out["streamed"][(0, 0)]

    full, _ = asyncio.run(run())
    candidates = [full.text[i : i + 2] for i in range(2, len(full.text) - 2)]
    stop = next(c for c in candidates if c.isascii() and c.isprintable())
    cut, streamed = asyncio.run(run(stop=[stop]))
    assert cut.text == full.text[: full.text.find(stop)]
    assert cut.finish_reason == "stop"
    assert cut.completion_tokens < full.completion_tokens or full.finish_reason == "stop"
    streamed_cut, streamed_text = asyncio.run(_stream_with_stop(engine, stop))
    assert streamed_text == streamed_cut.text == cut.text, "streaming must never send text of a stop sequence"


async def _stream_with_stop(engine, stop):
    out = await collect(engine.submit([job(engine, TEXTS[1], {"C+": 1.0}, max_tokens=24, stop=(stop,), stream=True)]))
    return out["finished"][(0, 0)], out["streamed"][(0, 0)]


def test_cancelled_requests_stop_early_and_free_the_worker(engine):
    async def scenario():
        long_job = job(engine, TEXTS[0], max_tokens=200)
        handle = engine.submit([long_job])
        assert isinstance(await handle.next_event(30), Started)
        handle.cancel()
        with engine.paused():
            queued = engine.submit([job(engine, TEXTS[1])])
            queued.cancel()
        follow = await collect(engine.submit([job(engine, TEXTS[2])]))
        return follow

    before = engine.stats.cancelled
    follow = asyncio.run(scenario())
    assert follow["finished"][(0, 0)].completion_tokens > 0
    assert engine.stats.cancelled == before + 2


def test_queue_bound_shutdown_and_failure_handling(pf, monkeypatch):
    engine = make_engine(pf, queue_size=2)

    async def scenario():
        with engine.paused():
            handles = [engine.submit([job(engine, t)]) for t in TEXTS[:2]]
            with pytest.raises(EngineOverloaded, match=r"queue is full \(2 waiting\)"):
                engine.submit([job(engine, TEXTS[2])])
            handles[1].cancel()  # a cancelled request gives its slot back at once, even while the worker waits
            handles[1] = engine.submit([job(engine, TEXTS[2])])
        done = await asyncio.gather(*(collect(h) for h in handles))
        calls = {"n": 0}
        original = pf.model.generate

        def broken(*args, **kwargs):
            calls["n"] += 1
            raise RuntimeError("boom")

        monkeypatch.setattr(pf.model, "generate", broken)
        failed = await collect(engine.submit([job(engine, TEXTS[3])]))
        monkeypatch.setattr(pf.model, "generate", original)
        recovered = await collect(engine.submit([job(engine, TEXTS[3])]))
        # draining: queued work finishes, new work is refused
        last = engine.submit([job(engine, TEXTS[4])])
        await asyncio.get_running_loop().run_in_executor(None, engine.shutdown, 30)
        with pytest.raises(EngineOverloaded, match="shutting down"):
            engine.submit([job(engine, TEXTS[5])])
        return done, failed, recovered, await collect(last)

    done, failed, recovered, last = asyncio.run(scenario())
    assert all(len(d["finished"]) == 1 for d in done)
    assert failed["failed"] == "generation failed: RuntimeError: boom"
    assert len(recovered["finished"]) == 1 and len(last["finished"]) == 1
    assert engine.stats.rejected == 2 and engine.stats.failed == 1 and engine.stats.cancelled == 1
