"""Stage-1 data: truncation and mixing maths by hand, tokenisation on the tiny tokenizer, the collator exactly."""

from __future__ import annotations

import json

import pytest
import torch

from personafuse.data.schema import SituationRecord
from personafuse.train.expert_data import (
    IGNORE_INDEX,
    ExpertCollator,
    build_expert_data,
    encode_pair,
    general_count,
    general_pair,
    one_hot_gates,
    read_general,
    truncate,
)
from personafuse.traits import POLES


def record(record_id: str, split: str = "train", user: str = "my cat died") -> SituationRecord:
    return SituationRecord.model_validate({
        "id": record_id, "domain": "grief_loss", "split": split,
        "messages": [{"role": "user", "content": user}],
        "analysis": {"cues": ["loss"], "rationale": "A loss calls for warmth and a calm, steady reply."},
        "activation": {"O": 0.0, "C": 0.0, "E": 0.0, "A": 0.8, "N": -0.5},
        "responses": {p: f"reply {p} to {record_id}" for p in POLES},
        "ideal": "ideal reply", "rejected": "rejected reply",
    })  # fmt: skip


@pytest.fixture(scope="module")
def tokenizer(tiny_base):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_base)


@pytest.mark.parametrize(
    ("prompt", "reply", "max_length", "expected"),
    [
        ([1, 2, 3, 4], [5, 6], 6, ([1, 2, 3, 4], [5, 6])),  # fits: untouched
        ([1, 2, 3, 4, 5], [6, 7], 6, ([2, 3, 4, 5], [6, 7])),  # the prompt loses its oldest token
        ([1, 2, 3], [4, 5, 6, 7, 8, 9, 10], 6, ([3], [4, 5, 6, 7, 8])),  # quarter of 6 = 1 prompt token kept
        ([1, 2, 3, 4, 5, 6, 7, 8], [9] * 10, 8, ([7, 8], [9] * 6)),  # quarter of 8 = 2 prompt tokens kept
        ([], [1, 2, 3], 2, ([], [1, 2])),  # no prompt: the reply alone is cut
    ],
)
def test_truncate_cuts_the_prompt_from_the_left(prompt, reply, max_length, expected):
    assert truncate(prompt, reply, max_length) == expected


@pytest.mark.parametrize(("n", "ratio", "expected"), [(8, 0.2, 2), (8, 0.0, 0), (10, 0.5, 10), (3, 0.25, 1)])
def test_general_count_makes_general_the_given_share(n, ratio, expected):
    # g / (n + g) = ratio  =>  g = n * ratio / (1 - ratio)
    assert general_count(n, ratio) == expected


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        ({"question": "2+2?", "answer": "4"}, ([{"role": "user", "content": "2+2?"}], "4")),
        ({"instruction": "Add", "input": "2 and 2", "output": "4"}, ([{"role": "user", "content": "Add\n\n2 and 2"}], "4")),
        ({"prompt": "hi", "response": "hello"}, ([{"role": "user", "content": "hi"}], "hello")),
        ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]},
         ([{"role": "user", "content": "hi"}], "yo")),
        ({"question": "2+2?", "answer": " "}, None),  # blank reply
        ({"text": "just text"}, None),
        ({"messages": [{"role": "user", "content": "hi"}]}, None),  # no assistant reply
    ],
)  # fmt: skip
def test_general_pair_reads_the_known_layouts(row, expected):
    assert general_pair(row) == expected


def test_read_general_names_the_line_without_the_fields(tmp_path):
    from personafuse.errors import ConfigError

    path = tmp_path / "general.jsonl"
    path.write_text(json.dumps({"question": "q", "answer": "a"}) + "\n" + json.dumps({"text": "t"}) + "\n")
    with pytest.raises(
        ConfigError, match=rf"data.general: {path}:2 has fields \['text'\] but needs one of the layouts"
    ):
        read_general(path)


def test_one_hot_gates():
    assert one_hot_gates("O-") == (0.0, 1.0) + (0.0,) * 8
    assert sum(one_hot_gates("N-")) == 1.0 and one_hot_gates("N-")[9] == 1.0


def test_encode_pair_puts_the_loss_on_the_reply_only(tokenizer):
    messages = [{"role": "user", "content": "my cat died"}]
    ids, labels = encode_pair(tokenizer, messages, "I am sad", max_length=512)
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    assert ids[: len(prompt_ids)] == prompt_ids
    assert labels[: len(prompt_ids)] == [IGNORE_INDEX] * len(prompt_ids)
    reply_ids = ids[len(prompt_ids) :]
    assert labels[len(prompt_ids) :] == reply_ids
    assert tokenizer.decode(reply_ids) == "I am sad<|im_end|>\n"  # the end-of-turn token is learned


def test_encode_pair_truncates_from_the_left_of_the_prompt(tokenizer):
    messages = [{"role": "user", "content": "hello there how are you today " * 5}]
    full, _ = encode_pair(tokenizer, messages, "great day", max_length=10_000)
    ids, labels = encode_pair(tokenizer, messages, "great day", max_length=20)
    assert len(ids) == 20 and ids == full[-20:]
    assert labels[-1] != IGNORE_INDEX and labels[0] == IGNORE_INDEX


def test_build_expert_data_hard_routes_poles_and_routes_general(tokenizer):
    records = [record("r1"), record("r2"), record("v1", split="val")]
    general = [([{"role": "user", "content": f"question {i}"}], f"answer {i}") for i in range(20)]
    routed_texts = []

    def route(texts):
        routed_texts.extend(texts)
        return torch.full((len(texts), 10), 0.1)

    data = build_expert_data(records, tokenizer, 64, general, general_ratio=0.2, route=route, seed=0)
    assert (data.persona, data.general) == (20, 5)  # 2 train records x 10 poles; 5 / 25 = 0.2
    persona = [s for s in data.samples if s.kind == "persona"]
    assert sorted(s.pole for s in persona) == sorted(list(POLES) * 2)
    assert all(s.gates == one_hot_gates(s.pole) for s in persona)
    general_samples = [s for s in data.samples if s.kind == "general"]
    assert all(s.gates == (pytest.approx(0.1),) * 10 for s in general_samples)
    assert len(routed_texts) == 5 and all(t.startswith("question ") for t in routed_texts)
    again = build_expert_data(records, tokenizer, 64, general, general_ratio=0.2, route=route, seed=0)
    assert [s.input_ids for s in again.samples] == [s.input_ids for s in data.samples], "seeded"
    with pytest.raises(ValueError, match="no 'train' records"):
        build_expert_data([record("v1", split="val")], tokenizer, 64)


def test_collator_right_pads_to_exact_tensors():
    gates_a, gates_b = list(one_hot_gates("O+")), [0.5, 0.5] + [0.0] * 8
    batch = ExpertCollator(pad_token_id=0)(
        [
            {"input_ids": [5, 6, 7], "labels": [-100, 6, 7], "persona_gates": gates_a},
            {"input_ids": [8, 9], "labels": [-100, 9], "persona_gates": gates_b},
        ]
    )
    assert set(batch) == {"input_ids", "attention_mask", "labels", "persona_gates"}
    assert torch.equal(batch["input_ids"], torch.tensor([[5, 6, 7], [8, 9, 0]]))
    assert torch.equal(batch["attention_mask"], torch.tensor([[1, 1, 1], [1, 1, 0]]))
    assert torch.equal(batch["labels"], torch.tensor([[-100, 6, 7], [-100, 9, -100]]))
    assert torch.equal(batch["persona_gates"], torch.tensor([gates_a, gates_b]))
    assert batch["persona_gates"].dtype == torch.float32 and batch["input_ids"].dtype == torch.long
    padded = ExpertCollator(pad_token_id=0, pad_to_multiple_of=4)(
        [{"input_ids": [1], "labels": [1], "persona_gates": gates_a}]
    )
    assert torch.equal(padded["input_ids"], torch.tensor([[1, 0, 0, 0]]))
    assert torch.equal(padded["labels"], torch.tensor([[1, -100, -100, -100]]))
