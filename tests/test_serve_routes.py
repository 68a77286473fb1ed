"""HTTP routes over the tiny real engine (FastAPI TestClient): OpenAI shapes, persona field, limits and errors."""

from __future__ import annotations

import json
import logging
import sys
import threading
import time

import pytest
from fastapi.testclient import TestClient

from personafuse.serve import ServeSettings, create_app
from personafuse.serve.presets import PRESETS
from personafuse.traits import POLES, TRAITS
from serve_support import CONV, make_engine, shared_tiny_pf


@pytest.fixture(scope="module")
def pf(tiny_base):
    return shared_tiny_pf(tiny_base)


@pytest.fixture(scope="module")
def engine(pf):
    return make_engine(pf)


@pytest.fixture()
def settings(monkeypatch):
    monkeypatch.delenv("PERSONAFUSE_API_KEY", raising=False)
    return ServeSettings(model="tiny", max_messages=4, max_tokens_limit=64, max_body_bytes=4000)


@pytest.fixture()
def client(engine, settings):
    with TestClient(create_app(engine, settings)) as client:
        yield client


def chat(client, **body):
    body.setdefault("model", "tiny")
    body.setdefault("messages", CONV)
    body.setdefault("max_tokens", 8)
    body.setdefault("temperature", 0)
    return client.post("/v1/chat/completions", json=body)


def sse_events(response) -> list:
    events = []
    for line in response.iter_lines():
        if line.startswith("data: "):
            payload = line[len("data: ") :]
            events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events


def test_chat_completion_has_openai_shape_usage_and_routing(client, engine):
    response = chat(client)
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-") and body["model"] == "tiny"
    choice = body["choices"][0]
    assert choice["index"] == 0 and choice["message"]["role"] == "assistant"
    assert choice["finish_reason"] in ("stop", "length")
    prompt_tokens = len(engine.encode_chat(CONV))
    usage = body["usage"]
    assert usage["prompt_tokens"] == prompt_tokens
    assert usage["total_tokens"] == prompt_tokens + usage["completion_tokens"] and 0 < usage["completion_tokens"] <= 8
    persona = body["persona"]
    assert persona["source"] == "auto" and list(persona["activations"]) == list(TRAITS)
    assert list(persona["gates"]) == list(POLES) and sum(persona["gates"].values()) == pytest.approx(1, abs=1e-4)
    assert chat(client).json()["choices"] == body["choices"], "greedy replies are deterministic"


def test_persona_field_forms_and_preset_models(client):
    off = chat(client, persona="off").json()["persona"]
    assert off["source"] == "off" and off["activations"] is None and sum(off["gates"].values()) == 0
    fixed = chat(client, persona={"A+": 0.7, "N-": 0.3}).json()["persona"]
    assert fixed["source"] == "gates" and fixed["gates"]["A+"] == 0.7 and fixed["gates"]["N-"] == 0.3
    activation = chat(client, persona={"activation": {"A": 0.9}}).json()["persona"]
    assert activation["activations"]["A"] == 0.9 and max(activation["gates"], key=activation["gates"].get) == "A+"
    preset = chat(client, model="personafuse:code-review")
    assert preset.status_code == 200 and preset.json()["model"] == "personafuse:code-review"
    assert preset.json()["persona"]["preset"] == "code-review"
    assert preset.json()["persona"]["gates"] == PRESETS["code-review"].gates.as_dict()
    by_name = chat(client, persona="code-review").json()["persona"]
    assert by_name["gates"] == preset.json()["persona"]["gates"]
    clash = chat(client, model="personafuse:code-review", persona="off")
    assert clash.status_code == 400 and clash.json()["error"]["param"] == "persona"
    assert "fixes the persona" in clash.json()["error"]["message"]


def test_streaming_chat_sends_routing_first_then_deltas_then_done(client):
    whole = chat(client, n=1).json()
    with client.stream("POST", "/v1/chat/completions",
                       json={"model": "tiny", "messages": CONV, "max_tokens": 8, "temperature": 0, "stream": True,
                             "stream_options": {"include_usage": True}}) as response:  # fmt: skip
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = sse_events(response)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == chunks[0]["id"] for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert chunks[0]["persona"] == whole["persona"]
    assert all("persona" not in c for c in chunks[1:])
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == whole["choices"][0]["message"]["content"]
    finals = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert finals == [whole["choices"][0]["finish_reason"]]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == whole["usage"]


def test_n_choices_stop_and_seed(client):
    many = chat(client, n=3).json()
    assert [c["index"] for c in many["choices"]] == [0, 1, 2]
    assert len({c["message"]["content"] for c in many["choices"]}) == 1, "greedy choices are identical"
    sampled = [chat(client, temperature=1.0, seed=5, max_tokens=12).json()["choices"][0] for _ in range(2)]
    assert sampled[0] == sampled[1]
    bug = [{"role": "user", "content": "the server is down please help with the error"}]
    full = chat(client, messages=bug, max_tokens=24, persona={"C+": 1.0}).json()["choices"][0]["message"]["content"]
    stop = next(
        full[i : i + 2] for i in range(2, len(full) - 2) if full[i : i + 2].isascii() and full[i : i + 2].isprintable()
    )
    cut = chat(client, messages=bug, max_tokens=24, persona={"C+": 1.0}, stop=stop).json()["choices"][0]
    assert cut["message"]["content"] == full[: full.find(stop)] and cut["finish_reason"] == "stop"


def test_completions_single_list_and_streaming(client):
    one = client.post("/v1/completions", json={"model": "tiny", "prompt": "hello there", "max_tokens": 6,
                                               "temperature": 0})  # fmt: skip
    assert one.status_code == 200
    body = one.json()
    assert body["object"] == "text_completion" and body["persona"]["source"] == "auto"
    many = client.post("/v1/completions", json={"model": "tiny", "prompt": ["hello there", "my cat died"], "n": 2,
                                                "max_tokens": 6, "temperature": 0}).json()  # fmt: skip
    assert [c["index"] for c in many["choices"]] == [0, 1, 2, 3]
    assert isinstance(many["persona"], list) and len(many["persona"]) == 2
    assert many["choices"][0]["text"] == body["choices"][0]["text"]
    with client.stream("POST", "/v1/completions", json={"model": "tiny", "prompt": ["hello there", "my cat died"],
                                                        "max_tokens": 6, "temperature": 0, "stream": True}) as r:  # fmt: skip
        events = sse_events(r)
    assert events[-1] == "[DONE]"
    routed = [e for e in events[:-1] if "persona" in e]
    assert sorted(e["choices"][0]["index"] for e in routed) == [0, 1]
    texts = {0: "", 1: ""}
    for event in events[:-1]:
        for c in event["choices"]:
            texts[c["index"]] += c["text"]
    assert texts == {0: many["choices"][0]["text"], 1: many["choices"][2]["text"]}


def test_models_lists_the_model_and_every_preset(client):
    data = client.get("/v1/models").json()["data"]
    assert data[0]["id"] == "tiny" and data[0]["persona"] is None
    presets = {m["id"]: m for m in data[1:]}
    assert set(presets) == {p.model_id for p in PRESETS.values()}
    assert presets["personafuse:grief-support"]["parent"] == "tiny"
    assert presets["personafuse:grief-support"]["persona"]["gates"]["A+"] == 0.5


def test_route_endpoint(client, pf):
    body = client.post("/v1/route", json={"input": ["my cat died", "we won the game"]}).json()
    assert [d["index"] for d in body["data"]] == [0, 1]
    expected = pf.route(["my cat died"])[0].as_dict()
    assert body["data"][0]["persona"]["gates"] == pytest.approx(expected["gates"], abs=1e-5)
    conv = client.post("/v1/route", json={"messages": [{"role": "system", "content": "be nice"}] + CONV}).json()
    assert conv["data"][0]["persona"]["gates"] == pytest.approx(
        pf.route(CONV[0]["content"])[0].as_dict()["gates"], abs=1e-5
    )
    fixed = client.post("/v1/route", json={"input": "x", "model": "personafuse:brainstorm"}).json()
    assert fixed["data"][0]["persona"]["preset"] == "brainstorm"
    empty = client.post("/v1/route", json={"input": ["fine", "  "]})
    assert empty.status_code == 400 and "input 1 has no text" in empty.json()["error"]["message"]


BAD_REQUESTS = [
    # (raw body or json, status, param, code, message part)
    (b"{not json", 400, None, "invalid_json", "request body is not valid JSON"),
    (b"[1, 2]", 400, None, "invalid_json", "must be a JSON object, got list"),
    (b'{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "persona": {"A+": NaN}}', 400, "persona",
     None, "gate A+ must be finite"),
    ({"persona": {"A+": -0.5}}, 400, "persona", None, "gate A+=-0.5 is negative"),
    ({"persona": {"Z+": 0.5}}, 400, "persona", None, "unknown pole(s) ['Z+']"),
    ({"model": "gpt-4"}, 404, "model", "model_not_found", "model 'gpt-4' does not exist; this server has tiny"),
    ({"messages": CONV * 5}, 400, "messages", None, "5 messages exceed the limit of 4"),
    ({"max_tokens": 65}, 400, "max_tokens", None, "max_tokens=65 exceeds this server's limit of 64"),
    ({"messages": [{"role": "user", "content": "hello " * 50}], "max_tokens": 60}, 400, "max_tokens",
     "context_length_exceeded", "exceeds the model's context of 256 tokens"),
    ({"messages": [{"role": "user", "content": "hello " * 260}]}, 400, "messages", "context_length_exceeded",
     "but the model's context is 256"),
    ({"n": 9}, 400, "n", None, "n=9 exceeds this server's max batch of 8"),
    ({"messages": [{"role": "user", "content": "   "}]}, 400, "messages", None, "no text to route"),
    ({"messages": [{"role": "tool", "content": "x"}]}, 400, "messages.0.role", None, "Input should be"),
    ({"temperature": 3}, 400, "temperature", None, "less than or equal to 2"),
    ({"messages": [{"role": "user", "content": "x" * 5000}]}, 413, None, "request_too_large", "limit of 4000 bytes"),
]  # fmt: skip


@pytest.mark.parametrize(("body", "status", "param", "code", "part"), BAD_REQUESTS)
def test_bad_requests_get_openai_error_envelopes(client, body, status, param, code, part):
    if isinstance(body, bytes):
        response = client.post("/v1/chat/completions", content=body, headers={"content-type": "application/json"})
    else:
        response = chat(client, **body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param and error["code"] == code
    assert part in error["message"]


def test_chunked_body_over_the_limit_is_413_and_unknown_routes_404(client):
    def chunks():
        yield b'{"model": "tiny", "messages": [{"role": "user", "content": "'
        for _ in range(10):
            yield b"x" * 500
        yield b'"}]}'

    response = client.post("/v1/chat/completions", content=chunks())
    assert response.status_code == 413 and response.json()["error"]["code"] == "request_too_large"
    missing = client.get("/v1/nothing")
    assert missing.status_code == 404 and "no route GET /v1/nothing" in missing.json()["error"]["message"]
    assert client.get("/v1/chat/completions").status_code == 405


def test_unknown_fields_are_logged_not_fatal(client, caplog):
    with caplog.at_level(logging.INFO, logger="personafuse.serve"):
        response = chat(client, vendor_flag=1, messages=[{"role": "user", "content": "hi", "weird": 2}], user="u1")
    assert response.status_code == 200
    assert "ignoring unknown field(s) ['vendor_flag', 'messages.0.weird']" in caplog.text
    assert "field(s) ['user'] have no effect" in caplog.text


def test_api_key_is_required_on_v1_routes_only(engine):
    settings = ServeSettings(model="tiny", api_key="correct-horse-battery")
    with TestClient(create_app(engine, settings)) as client:
        missing = client.get("/v1/models")
        assert missing.status_code == 401 and missing.json()["error"]["code"] == "invalid_api_key"
        assert "missing API key" in missing.json()["error"]["message"]
        wrong = client.get("/v1/models", headers={"Authorization": "Bearer correct-horse-batterz"})
        assert wrong.status_code == 401 and "invalid API key" in wrong.json()["error"]["message"]
        assert client.get("/v1/models", headers={"Authorization": "Basic correct-horse-battery"}).status_code == 401
        assert client.get("/v1/models", headers={"Authorization": "Bearer correct-horse-battery"}).status_code == 200
        assert client.get("/health").status_code == 200


def test_full_queue_is_503_with_retry_after_and_timeouts_are_504(pf):
    engine = make_engine(pf, queue_size=1)
    settings = ServeSettings(model="tiny", timeout_s=0.5, retry_after_s=2)
    with TestClient(create_app(engine, settings)) as client:
        with engine.paused():
            waiting: dict = {}
            thread = threading.Thread(target=lambda: waiting.setdefault("r", chat(client)))
            thread.start()
            while engine.pending() < 1:
                time.sleep(0.01)
            full = chat(client)
            assert full.status_code == 503 and full.headers["Retry-After"] == "2"
            assert full.json()["error"]["code"] == "overloaded" and full.json()["error"]["type"] == "server_error"
            thread.join(10)
        timed_out = waiting["r"]
        assert timed_out.status_code == 504 and timed_out.json()["error"]["code"] == "timeout"
        with engine.paused():
            streamed = client.post("/v1/chat/completions", json={"model": "tiny", "messages": CONV, "stream": True})
        assert streamed.status_code == 504
        assert chat(client).status_code == 200, "the server recovers once the worker runs again"
    assert engine.stats.cancelled >= 2


def test_health_and_web_page(client, monkeypatch, tmp_path):
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["model"] == "tiny" and health["queue_size"] == 64
    import personafuse.serve.app as app_module

    monkeypatch.setattr(app_module, "STATIC_DIR", tmp_path)
    assert client.get("/").status_code == 404
    (tmp_path / "index.html").write_text("<html><body>personafuse</body></html>")
    page = client.get("/")
    assert (
        page.status_code == 200 and "personafuse" in page.text and page.headers["content-type"].startswith("text/html")
    )


def test_cli_serve_builds_the_app_and_refuses_open_hosts_without_a_key(pf, monkeypatch, capsys):
    import uvicorn
    from typer.testing import CliRunner

    import personafuse.loading
    from personafuse.cli import app as cli_app

    captured: dict = {}
    monkeypatch.delenv("PERSONAFUSE_API_KEY", raising=False)
    monkeypatch.setattr(personafuse.loading, "load_model", lambda spec, device=None: pf)
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: captured.update(app=app, **kwargs))
    result = CliRunner().invoke(
        cli_app, ["serve", "--model", "/models/tiny-ckpt", "--port", "8123", "--max-batch", "4"]
    )
    assert result.exit_code == 0, result.output
    assert captured["host"] == "127.0.0.1" and captured["port"] == 8123 and captured["timeout_graceful_shutdown"] == 30
    with TestClient(captured["app"]) as client:
        assert client.get("/health").json()["max_batch"] == 4
        assert client.get("/v1/models").json()["data"][0]["id"] == "tiny-ckpt"
        assert chat(client, model="tiny-ckpt").status_code == 200
    from personafuse.cli import main

    monkeypatch.setattr(sys, "argv", ["personafuse", "serve", "--host", "0.0.0.0"])
    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "--host 0.0.0.0 is reachable from other machines; set --api-key" in err
    assert len(err.strip().splitlines()) == 1
