"""Real clients against a real uvicorn server on 127.0.0.1: the openai SDK, lm-eval, graceful shutdown."""

from __future__ import annotations

import json
import threading
import time

import httpx
import openai
import pytest

from personafuse.serve import ServeSettings, create_app
from personafuse.traits import POLES
from serve_support import CONV, make_engine, running_server, shared_tiny_pf


@pytest.fixture(scope="module")
def pf(tiny_base):
    return shared_tiny_pf(tiny_base)


@pytest.fixture(scope="module")
def server(pf):
    engine = make_engine(pf)
    with running_server(create_app(engine, ServeSettings(model="tiny", api_key="test-key-123"))) as (url, _):
        yield url, engine


@pytest.fixture()
def sdk(server):
    return openai.OpenAI(base_url=f"{server[0]}/v1", api_key="test-key-123", max_retries=0, timeout=60)


def test_openai_sdk_chat_with_persona_in_extra_body(sdk):
    reply = sdk.chat.completions.create(model="tiny", messages=CONV, max_tokens=8, temperature=0,
                                        extra_body={"persona": {"A+": 0.7, "N-": 0.3}})  # fmt: skip
    assert reply.object == "chat.completion" and reply.choices[0].message.role == "assistant"
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    persona = reply.model_extra["persona"]
    assert persona["source"] == "gates" and persona["gates"]["A+"] == 0.7
    auto = sdk.chat.completions.create(model="tiny", messages=CONV, max_tokens=8, temperature=0)
    assert auto.model_extra["persona"]["source"] == "auto" and list(auto.model_extra["persona"]["gates"]) == list(
        POLES
    )


def test_openai_sdk_streaming_routing_in_the_first_chunk(sdk):
    whole = sdk.chat.completions.create(model="tiny", messages=CONV, max_tokens=8, temperature=0,
                                        extra_body={"persona": "off"})  # fmt: skip
    stream = sdk.chat.completions.create(model="tiny", messages=CONV, max_tokens=8, temperature=0, stream=True,
                                         stream_options={"include_usage": True}, extra_body={"persona": "off"})  # fmt: skip
    chunks = list(stream)
    assert chunks[0].model_extra["persona"]["source"] == "off"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_openai_sdk_completions_models_and_errors(sdk, server):
    completion = sdk.completions.create(model="personafuse:tutor", prompt="hello there", max_tokens=6, temperature=0)
    assert completion.choices[0].finish_reason in ("stop", "length")
    assert completion.model_extra["persona"]["preset"] == "tutor"
    ids = [m.id for m in sdk.models.list()]
    assert ids[0] == "tiny" and "personafuse:grief-support" in ids
    with pytest.raises(openai.NotFoundError, match="model 'nope' does not exist"):
        sdk.chat.completions.create(model="nope", messages=CONV)
    with pytest.raises(openai.BadRequestError, match="negative"):
        sdk.chat.completions.create(model="tiny", messages=CONV, extra_body={"persona": {"A+": -1}})
    wrong = openai.OpenAI(base_url=f"{server[0]}/v1", api_key="wrong-key-456", max_retries=0)
    with pytest.raises(openai.AuthenticationError, match="invalid API key"):
        wrong.models.list()


def test_graceful_shutdown_finishes_in_flight_requests(pf):
    engine = make_engine(pf)
    result: dict = {}
    with running_server(create_app(engine, ServeSettings(model="tiny"))) as (url, server):

        def call() -> None:
            body = {"model": "tiny", "messages": CONV, "max_tokens": 8, "temperature": 0}
            result["response"] = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60)

        with engine.paused():
            thread = threading.Thread(target=call)
            thread.start()
            while engine.pending() < 1:
                time.sleep(0.01)
            server.should_exit = True  # as on SIGTERM: stop accepting, let in-flight requests finish
            time.sleep(0.3)
        thread.join(30)
    assert result["response"].status_code == 200
    assert result["response"].json()["choices"][0]["message"]["content"] is not None
    assert engine.health()["draining"] is True, "the lifespan drained and stopped the engine"


def test_lm_eval_local_chat_completions(server, monkeypatch):
    """lm-eval's `local-chat-completions` model drives the server (skipped where lm-eval is not installed)."""
    pytest.importorskip("lm_eval")
    from lm_eval.api.instance import Instance
    from lm_eval.models.openai_completions import LocalChatCompletion

    url, _ = server
    monkeypatch.setenv("OPENAI_API_KEY", "test-key-123")  # lm-eval sends it as the bearer key
    lm = LocalChatCompletion(base_url=f"{url}/v1/chat/completions", model="tiny", tokenizer_backend=None,
                             tokenized_requests=False, max_gen_toks=8)  # fmt: skip
    prompts = ["my cat died and I am sad", "the server is down please help"]
    requests = [
        Instance("generate_until", doc={}, idx=i,
                 arguments=(lm.apply_chat_template([{"role": "user", "content": p}]), {"until": ["\n\n"], "do_sample": False}))
        for i, p in enumerate(prompts)
    ]  # fmt: skip
    replies = lm.generate_until(requests)
    assert len(replies) == 2 and all(isinstance(r, str) for r in replies)
    direct = httpx.post(f"{url}/v1/chat/completions", timeout=60, headers={"Authorization": "Bearer test-key-123"},
                        json={"model": "tiny", "messages": json.loads(requests[0].args[0].prompt), "max_tokens": 8,
                              "temperature": 0, "stop": ["\n\n"], "seed": 1234}).json()  # fmt: skip
    assert replies[0] == direct["choices"][0]["message"]["content"]


@pytest.mark.slow
def test_real_smollm2_behind_the_openai_sdk():
    """The shipped SmolLM2 + router served for real: a sensible greedy reply, streamed and not."""
    from personafuse.loading import load_model

    engine = make_engine(load_model("smollm2-135m-instruct", device="cpu"))
    engine.model_name = "smollm2"
    with running_server(create_app(engine, ServeSettings(model="smollm2"))) as (url, _):
        sdk = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=300)
        messages = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]
        reply = sdk.chat.completions.create(model="smollm2", messages=messages, max_tokens=12, temperature=0)
        assert "paris" in reply.choices[0].message.content.lower()
        stream = sdk.chat.completions.create(model="personafuse:tutor", messages=messages, max_tokens=12,
                                             temperature=0, stream=True)  # fmt: skip
        chunks = list(stream)
        assert chunks[0].model_extra["persona"]["preset"] == "tutor"
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices).strip()
