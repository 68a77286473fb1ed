"""Table tests of the synthesis pipeline's pure functions: split, dedup, JSON extraction, backoff, config, prompts."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from personafuse.data.split import assign_split, split_bucket
from personafuse.data.synthesis.client import backoff_delay
from personafuse.data.synthesis.config import SynthesisConfig, parse_domains
from personafuse.data.synthesis.dedup import NearDuplicateFilter, jaccard, normalise, opening, shingles
from personafuse.data.synthesis.json_repair import ReplyInvalid, extract_json_object, validate_reply
from personafuse.data.synthesis.prompts import load_prompt, prompt_names
from personafuse.data.synthesis.replies import AnnotationReply, IdealReply, PolesReply, SituationDraft
from personafuse.errors import ConfigError

# ---- split -------------------------------------------------------------------------------------------------


def test_split_bucket_is_sha256_prefix_mod_100():
    # sha256("a") starts ca978112ca1bbdca = 14598278634844962250 (decimal); mod 100 = 50 -> train
    assert split_bucket("a") == int("ca978112ca1bbdca", 16) % 100 == 50


@pytest.mark.parametrize(
    ("record_id", "bucket", "split"),
    [
        ("syn-planning-0035", 0, "train"),
        ("syn-planning-0024", 79, "train"),
        ("syn-planning-0097", 80, "val"),
        ("syn-planning-0026", 89, "val"),
        ("syn-planning-0052", 90, "test"),
        ("syn-planning-0285", 99, "test"),
        ("grief_loss-001", 29, "train"),
    ],
)
def test_assign_split_table(record_id, bucket, split):
    assert split_bucket(record_id) == bucket
    assert assign_split(record_id) == split


def test_assign_split_proportions_are_80_10_10():
    counts = Counter(assign_split(f"id-{k}") for k in range(10_000))
    assert counts == {"train": 7978, "val": 1022, "test": 1000}


# ---- dedup -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [("  Hi, THERE!! ", "hi there"), ("naïve café", "na ve caf"), ("---", ""), ("A1-b2", "a1 b2")],
)
def test_normalise(text, expected):
    assert normalise(text) == expected


def test_shingles_and_jaccard_by_hand():
    # "hi there" -> 3-shingles: "hi ", "i t", " th", "the", "her", "ere"
    assert shingles("Hi, there", k=3) == {"hi ", "i t", " th", "the", "her", "ere"}
    assert shingles("Hi!") == {"hi"}  # shorter than k: one shingle
    assert shingles("?!") == frozenset()
    # {"ab","bc"} vs {"bc","cd"}: 1 shared of 3 distinct
    assert jaccard(frozenset({"ab", "bc"}), frozenset({"bc", "cd"})) == pytest.approx(1 / 3)
    assert jaccard(frozenset(), frozenset()) == 1.0
    with pytest.raises(ValueError, match="k must be >= 1"):
        shingles("x", k=0)


DOG = "My dog died yesterday and the house is so quiet now."


@pytest.mark.parametrize(
    ("kept", "new", "threshold", "kind"),
    [
        (DOG, "my dog died yesterday, and the house is so quiet now!!", 0.5, "near_duplicate"),  # jaccard 1.0
        (DOG, "My dog passed away yesterday and the house is very quiet now.", 0.5, None),  # jaccard 0.47
        (DOG, "My dog passed away yesterday and the house is very quiet now.", 0.4, "near_duplicate"),
        (DOG, "Can you help me plan a three-day trip to Lisbon in March on a budget?", 0.5, None),  # 0.0
        (
            "I need some help with my wedding budget, we have 8000 dollars",
            "I need some help with my essay about climate policy for school",  # jaccard 0.23, same 5 words
            0.5,
            "same_opening",
        ),
    ],
)
def test_near_duplicate_filter_table(kept, new, threshold, kind):
    dedup = NearDuplicateFilter(threshold=threshold)
    dedup.add("k1", kept, group="g")
    found = dedup.check(new, group="g")
    assert (found.kind if found else None) == kind
    if found:
        assert found.match == "k1"
        assert "k1" in found.reason()


def test_same_opening_only_within_a_group_and_can_be_off():
    a = "I need some help with my wedding budget, we have 8000 dollars"
    b = "I need some help with my essay about climate policy for school"
    dedup = NearDuplicateFilter()
    dedup.add("k1", a, group="planning")
    assert dedup.check(b, group="critique_negotiation") is None
    off = NearDuplicateFilter(opening_words=0)
    off.add("k1", a, group="planning")
    assert off.check(b, group="planning") is None
    assert opening("too short", 5) == ""


def test_near_duplicate_filter_reports_the_closest_match():
    dedup = NearDuplicateFilter(threshold=0.3)
    dedup.add("far", "My dog passed away yesterday and the house is very quiet now.")
    dedup.add("close", DOG)
    found = dedup.check(DOG.upper())
    assert found is not None and found.match == "close" and found.similarity == 1.0


def test_near_duplicate_filter_rejects_bad_settings():
    with pytest.raises(ValueError, match=r"threshold must be in \(0, 1\], got 0"):
        NearDuplicateFilter(threshold=0)


# ---- JSON extraction and validation -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"a": 1}', {"a": 1}),
        ('  \n{"a": [1, {"b": 2}]}\n', {"a": [1, {"b": 2}]}),
        ('```json\n{"a": 1}\n```', {"a": 1}),
        ('Sure! Here it is:\n```\n{"a": 1}\n```\nHope that helps.', {"a": 1}),
        (
            'Here you go: {"a": "braces } and { inside", "b": "quote \\" }"} -- done',
            {"a": "braces } and { inside", "b": 'quote " }'},
        ),
        ('{"a": 1} and then {"b": 2}', {"a": 1}),
        ('prose {not json} then {"a": 1}', {"a": 1}),
    ],
)
def test_extract_json_object_accepts(text, expected):
    assert extract_json_object(text) == expected


@pytest.mark.parametrize(
    ("text", "category", "message"),
    [
        ("", "no_json", "empty"),
        ("I cannot help with that.", "no_json", "no JSON object"),
        ("[1, 2, 3]", "no_json", "no JSON object"),
        ('{"a": 1,}', "malformed_json", "line 1 column 9"),
        ("{'a': 1}", "malformed_json", "Expecting property name enclosed in double quotes"),
        ('{"situations": [{"messages": [', "malformed_json", "cut off by max_tokens"),
        ('Here: {"ideal": "I am so sor', "malformed_json", "Unterminated string.*cut off by max_tokens"),
    ],
)
def test_extract_json_object_rejects(text, category, message):
    with pytest.raises(ReplyInvalid, match=message) as info:
        extract_json_object(text)
    assert info.value.category == category


POLE_REPLIES = {p: f"reply {i}" for i, p in enumerate(("O+", "O-", "C+", "C-", "E+", "E-", "A+", "A-", "N+", "N-"))}
ANALYSIS = {"cues": ["a cue"], "rationale": "a rationale long enough to pass"}


@pytest.mark.parametrize(
    ("model", "value", "category", "message"),
    [
        (AnnotationReply, {"analysis": ANALYSIS, "activation": {"O": 0.1}}, "schema:activation", "exactly the keys"),
        (
            AnnotationReply,
            {"analysis": ANALYSIS, "activation": dict.fromkeys("OCEAN", 0.0) | {"N": 1.5}},
            "schema:activation",
            r"\[-1, 1\]",
        ),
        (AnnotationReply, {"analysis": {"cues": [], "rationale": "x"}, "activation": {}}, "schema:analysis", "cues"),
        (PolesReply, {"responses": POLE_REPLIES | {"N-": "reply 0"}}, "schema:responses", "identical"),
        (PolesReply, {"responses": {"O+": "x"}}, "schema:responses", "missing"),
        (IdealReply, {"ideal": "same", "rejected": " same "}, "schema:ideal", "identical"),
        (SituationDraft, {"messages": [{"role": "assistant", "content": "hi"}]}, "schema:messages", "last message"),
    ],
)
def test_validate_reply_rejects_with_field_category(model, value, category, message):
    import json

    with pytest.raises(ReplyInvalid, match=message) as info:
        validate_reply(json.dumps(value), model)
    assert info.value.category.startswith(category.split(":")[0])
    if model is not IdealReply:  # a model-level validator reports no field
        assert info.value.category == category


def test_validate_reply_accepts_and_normalises():
    import json

    reply = validate_reply(
        "```json\n"
        + json.dumps({"analysis": ANALYSIS, "activation": dict(O=0.333, C=-1, E=0, A=0.8, N=-0.5)})
        + "\n```",
        AnnotationReply,
    )
    assert reply.activation == {"O": 0.33, "C": -1.0, "E": 0.0, "A": 0.8, "N": -0.5}


# ---- backoff -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("attempt", "retry_after", "low", "high"),
    [
        (0, None, 0.5, 1.0),  # initial 1 s, jittered to 50-100 %
        (2, None, 2.0, 4.0),  # 1 * 2^2 = 4 s
        (10, None, 15.0, 30.0),  # capped at 30 s
        (0, 7.0, 7.0, 7.0),  # Retry-After is a lower bound
        (0, 999.0, 30.0, 30.0),  # ... itself capped
    ],
)
def test_backoff_delay_bounds(attempt, retry_after, low, high):
    rng = random.Random(0)
    for _ in range(50):
        delay = backoff_delay(attempt, initial=1.0, maximum=30.0, retry_after=retry_after, rng=rng)
        assert low <= delay <= high


# ---- config ------------------------------------------------------------------------------------------------


def _config(**overrides):
    values = {"base_url": "http://127.0.0.1:8000/v1", "model": "m", "out_dir": "out"} | overrides
    return SynthesisConfig(**values)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"base_url": "localhost:8000"}, r"--base-url 'localhost:8000' is not an http\(s\) URL"),
        ({"domains": ("griefs",)}, r"unknown domain 'griefs'; use any of grief_loss, .*'griefs:what"),
        ({"domains": ("Bad Name:x",)}, "must be 'snake_case_name:description"),
        ({"domains": (",",)}, "no domain given"),
        ({"per_domain": 0}, "--per-domain must be a whole number >= 1, got 0"),
        ({"concurrency": -2}, "--concurrency must be a whole number >= 1, got -2"),
        ({"max_retries": -1}, "--max-retries must be a whole number >= 0"),
        ({"timeout": 0.0}, "--timeout must be a number of seconds > 0"),
        ({"temperature": 3.0}, r"--temperature must be in \[0, 2\]"),
        ({"max_tokens": 4}, "--max-tokens must be >= 16"),
        ({"dedup_threshold": 1.5}, "--dedup-threshold"),
        ({"id_prefix": "a b"}, "--id-prefix 'a b'"),
        ({"model": " "}, "--model is empty"),
    ],
)
def test_config_errors_name_the_flag_and_value(overrides, message):
    with pytest.raises(ConfigError, match=message):
        _config(**overrides)


def test_config_collects_all_problems_in_one_error():
    with pytest.raises(ConfigError) as info:
        _config(base_url="nope", per_domain=0, domains=("nowhere",))
    text = str(info.value)
    assert "--base-url" in text and "--per-domain" in text and "unknown domain 'nowhere'" in text


def test_parse_domains_comma_lists_custom_and_order():
    resolved, problems = parse_domains(["planning, grief_loss", "pet_care: looking after pets", "planning"])
    assert problems == []
    assert list(resolved) == ["planning", "grief_loss", "pet_care"]
    assert resolved["pet_care"] == "looking after pets"


def test_config_ids_and_rounds():
    cfg = _config(per_domain=12, batch_size=5, id_prefix="run2")
    assert cfg.record_id("planning", 7) == "run2-planning-0007"
    assert cfg.max_rounds_per_domain == 2 * 3 + 2
    assert "api_key" not in cfg.public_dict()


# ---- prompts -----------------------------------------------------------------------------------------------


STAGE_VARIABLES = {
    "situations": {"count", "domain", "description", "avoid"},
    "annotate": {"domain", "conversation", "pole_guide"},
    "poles": {"domain", "conversation", "pole_guide"},
    "ideal": {"domain", "conversation", "cues", "rationale", "activation", "activated", "pole_guide"},
    "repair": {"error"},
}


@pytest.mark.parametrize("name", sorted(STAGE_VARIABLES))
def test_prompt_templates_load_and_render_completely(name):
    template = load_prompt(name, "v1")
    assert template.name == f"{name}.v1"
    assert template.placeholders() == STAGE_VARIABLES[name]
    messages = template.render(**{key: f"<{key}>" for key in STAGE_VARIABLES[name]})
    assert messages[-1]["role"] == "user"
    assert all("$" not in m["content"] for m in messages)
    if name != "repair":
        assert messages[0]["role"] == "system" and "JSON" in messages[0]["content"]


def test_prompt_files_are_listed_and_unknown_ones_fail_clearly():
    assert {"annotate.v1", "ideal.v1", "pole_guide.v1", "poles.v1", "repair.v1", "situations.v1"} <= set(
        prompt_names()
    )
    with pytest.raises(FileNotFoundError, match=r"no prompt file annotate.v9.txt .*available: annotate.v1"):
        load_prompt("annotate", "v9")
