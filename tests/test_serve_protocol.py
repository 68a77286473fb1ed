"""Pure pieces of the server: the persona field, request validation, padding, stop handling, settings, presets."""

from __future__ import annotations

import math

import pytest
import torch
from pydantic import ValidationError

from personafuse.errors import ConfigError
from personafuse.serve.engine import SamplingParams, find_stop, held_back, left_pad
from personafuse.serve.presets import PRESETS, find_preset, register_preset
from personafuse.serve.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    RouteRequest,
    parse_persona,
    validation_message,
)
from personafuse.serve.settings import ServeSettings, is_loopback
from personafuse.traits import POLES, PersonaError

MSG = [{"role": "user", "content": "hi"}]


def test_parse_persona_accepts_every_documented_form():
    assert parse_persona(None).source == "auto"
    assert parse_persona("auto").source == "auto"
    off = parse_persona("off")
    assert off.source == "off" and off.gates is not None and off.gates.intensity == 0
    gates = parse_persona({"A+": 0.7, "N-": 0.3})
    assert gates.source == "gates" and gates.gates.values[POLES.index("A+")] == 0.7
    activation = parse_persona({"activation": {"A": 0.9, "N": -0.6}})
    assert activation.source == "activation" and activation.activation.as_dict()["N"] == -0.6
    preset = parse_persona("grief-support")
    assert preset.source == "preset" and preset.preset == "grief-support"
    assert parse_persona("personafuse:grief-support").gates == PRESETS["grief-support"].gates


@pytest.mark.parametrize(
    ("value", "match"),
    [
        ({"Q+": 0.5}, r"unknown pole\(s\) \['Q\+'\]"),
        ({"A+": -0.1}, "gate A\\+=-0.1 is negative"),
        ({"A+": math.nan}, "gate A\\+ must be finite"),
        ({"A+": "high"}, "gate A\\+ must be a number"),
        ({"A+": 0.8, "N-": 0.8}, "gates sum to 1.6000 > 1"),
        ({}, "has no gates"),
        ({"activation": {"A": 2}}, r"activation A=2.0 is outside \[-1, 1\]"),
        ({"activation": {"X": 0.1}}, r"unknown trait\(s\) \['X'\]"),
        ({"activation": {"A": 0.1}, "A+": 1}, "takes only a mapping"),
        ("cheerful", "persona 'cheerful' is not 'auto', 'off' or a preset"),
        (3, "got int"),
    ],
)
def test_parse_persona_rejects_bad_values_with_the_fix(value, match):
    with pytest.raises(PersonaError, match=match):
        parse_persona(value)


def test_chat_request_defaults_ranges_and_unknown_fields():
    req = ChatCompletionRequest.model_validate({"model": "m", "messages": MSG, "vendor_flag": True})
    assert (req.temperature, req.top_p, req.n, req.stream, req.max_tokens) == (1.0, 1.0, 1, False, None)
    assert req.model_extra == {"vendor_flag": True}
    assert (
        ChatCompletionRequest.model_validate({"model": "m", "messages": MSG, "max_completion_tokens": 5}).max_tokens
        == 5
    )
    parts = ChatCompletionRequest.model_validate(
        {
            "model": "m",
            "messages": [
                {"role": "developer", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}
            ],
        }
    )
    assert parts.template_messages() == [{"role": "system", "content": "ab"}]
    assert ChatCompletionRequest.model_validate({"model": "m", "messages": MSG, "stop": "x"}).stop_sequences() == (
        "x",
    )


@pytest.mark.parametrize(
    ("body", "param", "match"),
    [
        ({"messages": MSG}, "model", "Field required"),
        ({"model": "m", "messages": []}, "messages", "at least 1 item"),
        ({"model": "m", "messages": MSG, "temperature": -1}, "temperature", "greater than or equal to 0"),
        ({"model": "m", "messages": MSG, "top_p": 0}, "top_p", "greater than 0"),
        ({"model": "m", "messages": MSG, "max_tokens": 0}, "max_tokens", "greater than or equal to 1"),
        ({"model": "m", "messages": MSG, "n": 0}, "n", "greater than or equal to 1"),
        ({"model": "m", "messages": MSG, "stop": ["a", "b", "c", "d", "e"]}, "stop", "at most 4 stop sequences"),
        ({"model": "m", "messages": MSG, "stop": [""]}, "stop", "non-empty"),
        ({"model": "m", "messages": MSG, "temperature": math.nan}, "temperature", "finite number"),
        ({"model": "m", "messages": [{"role": "tool", "content": "x"}]}, "messages.0.role", "Input should be"),
        ({"model": "m", "messages": MSG, "persona": {"A+": -1}}, "persona", "negative"),
        ({"model": "m", "messages": MSG, "logprobs": True}, None, "logprobs are not supported"),
        ({"model": "m", "messages": MSG, "max_tokens": 3, "max_completion_tokens": 4}, None, "differ"),
    ],
)
def test_chat_request_validation_names_the_field(body, param, match):
    with pytest.raises(ValidationError) as info:
        ChatCompletionRequest.model_validate(body)
    message, got_param = validation_message(info.value.errors()[0])
    assert got_param == param
    assert match in message


def test_completion_and_route_requests():
    assert CompletionRequest.model_validate({"model": "m", "prompt": ["a", "b"]}).prompts() == ["a", "b"]
    for body, match in [
        ({"model": "m", "prompt": []}, "empty list"),
        ({"model": "m", "prompt": "a", "echo": True}, "echo is not supported"),
        ({"model": "m", "prompt": "a", "logprobs": 2}, "logprobs are not supported"),
    ]:
        with pytest.raises(ValidationError, match=match):
            CompletionRequest.model_validate(body)
    with pytest.raises(ValidationError, match="exactly one of `messages`"):
        RouteRequest.model_validate({"messages": MSG, "input": "x"})
    with pytest.raises(ValidationError, match="exactly one of `messages`"):
        RouteRequest.model_validate({})


def test_left_pad_matches_the_tokenizers_left_padding(tiny_base):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_base, padding_side="left")
    convs = [[{"role": "user", "content": "hello there"}], [{"role": "user", "content": "my cat died and I am sad"}]]
    texts = [tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in convs]
    expected = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)  # as chat_inputs
    rows = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    ids, mask = left_pad(rows, tokenizer.pad_token_id)
    assert torch.equal(ids, expected["input_ids"]) and torch.equal(mask, expected["attention_mask"])
    ids, mask = left_pad([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    with pytest.raises(ValueError, match="no empty rows"):
        left_pad([[1], []], 0)


def test_stop_search_and_streaming_hold_back():
    assert find_stop("Hello\nUser: hi", ["\nUser:"]) == 5
    assert find_stop("abcabc", ["ca", "bc"]) == 1  # the earliest of all stops wins
    assert find_stop("abc", ["x"]) == -1
    # "\nUs" could still become "\nUser:": hold back its 3 characters; "\nX" cannot
    assert held_back("Hello\nUs", ["\nUser:"]) == 3
    assert held_back("Hello\nX", ["\nUser:"]) == 0
    assert held_back("ab", ["bcd", "abx"]) == 2
    assert held_back("anything", []) == 0


def test_sampling_params_batch_keys_and_validation():
    assert SamplingParams(8, temperature=0).batch_key() == ("greedy",)
    assert SamplingParams(8, temperature=0, seed=3).batch_key() == ("greedy",)  # greedy ignores the seed
    assert SamplingParams(8, temperature=0.7, top_p=0.9).batch_key() == ("sample", 0.7, 0.9)
    assert SamplingParams(8, temperature=0.7, seed=1).batch_key() is None  # seeded sampling runs alone
    with pytest.raises(ValueError, match="max_tokens must be >= 1, got 0"):
        SamplingParams(0)
    with pytest.raises(ValueError, match=r"top_p must be in \(0, 1\], got 0"):
        SamplingParams(1, top_p=0)


def test_settings_validate_all_problems_at_once(monkeypatch):
    monkeypatch.delenv("PERSONAFUSE_API_KEY", raising=False)
    assert ServeSettings().host == "127.0.0.1"
    with pytest.raises(ConfigError) as info:
        ServeSettings(host="0.0.0.0", max_batch=0, port=70000, batch_wait_ms=-1)
    message = str(info.value)
    for part in ("--max-batch must be a positive number, got 0", "--port must be in 1..65535, got 70000",
                 "--batch-wait-ms must be >= 0", "--host 0.0.0.0 is reachable from other machines; set --api-key"):  # fmt: skip
        assert part in message
    with pytest.raises(ConfigError, match="at least 8 printable"):
        ServeSettings(api_key="short")
    assert ServeSettings(host="0.0.0.0", api_key="s3cret-key").api_key == "s3cret-key"
    monkeypatch.setenv("PERSONAFUSE_API_KEY", "from-the-env")
    assert ServeSettings(host="0.0.0.0").api_key == "from-the-env"
    assert ServeSettings(model="/ckpt/run-7/").served_name == "run-7"
    assert ServeSettings(api_key="from-the-env").to_dict()["api_key"] == "***"


def test_loopback_hosts():
    assert all(is_loopback(h) for h in ("127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "192.168.1.4", "example.org", "::"))


def test_preset_registry():
    assert find_preset("personafuse:code-review") is PRESETS["code-review"]
    assert all(abs(p.gates.intensity - 1) < 1e-9 for p in PRESETS.values())
    with pytest.raises(PersonaError, match="already registered"):
        register_preset("code-review", "x", {"C+": 1})
    with pytest.raises(PersonaError, match="lower-case letters"):
        register_preset("Bad Name", "x", {"C+": 1})
