"""Personality: Likert answers from option probabilities, reverse keying by hand, pole separation with scripted
personas, the three probes, and the BFI / IPIP item keys on the real files."""

from __future__ import annotations

import math

import pytest

from personafuse.errors import ConfigError, UserError
from personafuse.evaluate.personality import (
    LIKERT,
    Personality,
    Situation,
    keyed,
    likert_from_logliks,
    load_inventory,
    parse_likert,
    pole_separation,
    situational_separation,
    trait_means,
)
from personafuse.evaluate.scripted import ScriptedModel
from personafuse.traits import POLES, TRAITS, Activation, Gates, Routing
from test_eval_support import DATA, needs_data


def test_reverse_keying_by_hand():
    assert keyed(5, reverse=True) == 1 and keyed(2, reverse=True) == 4 and keyed(3, reverse=True) == 3
    assert keyed(4.25, reverse=True) == pytest.approx(1.75) and keyed(4.25, reverse=False) == 4.25


def test_likert_from_logliks_by_hand():
    probs, expected = likert_from_logliks([-1.0] * 5)
    assert probs == pytest.approx([0.2] * 5) and expected == pytest.approx(3.0)
    # p(4) = p(5) = 1/2, others ~0: answer 4.5
    probs, expected = likert_from_logliks([-100.0, -100.0, -100.0, math.log(0.5), math.log(0.5)])
    assert expected == pytest.approx(4.5, abs=1e-6)


def test_parse_likert():
    cases = {"4": 4, "4 - agree a little": 4, "I'd say 2.": 2, "Rating: 5/5": 5, "none": None, "10": None, "0.5": None}
    for reply, expected in cases.items():
        assert parse_likert(reply) == expected, reply


def test_trait_means_and_pole_separation_by_hand():
    rows = [
        {"condition": "A+", "trait": "A", "score": 5.0}, {"condition": "A+", "trait": "A", "score": 4.0},
        {"condition": "A-", "trait": "A", "score": 1.0}, {"condition": "A-", "trait": "A", "score": 2.0},
        {"condition": "A-", "trait": "E", "score": None},
    ]  # fmt: skip
    means = trait_means(rows)
    assert means == {"A+": {"A": 4.5}, "A-": {"A": 1.5}}
    assert pole_separation(means) == {"A": 3.0}


def test_situational_separation_by_hand():
    situations = [
        Situation("s1", "x", {"A": 0.8}),
        Situation("s2", "y", {"A": -0.6}),
        Situation("s3", "z", {"A": 0.1}),
    ]
    means = {"sit:s1": {"A": 4.0}, "sit:s2": {"A": 2.5}, "sit:s3": {"A": 5.0}}
    assert situational_separation(means, situations) == {"A": 1.5}  # s3 is not activated


@needs_data
def test_bfi_reverse_items_and_traits_match_the_published_key():
    items = {i.key: i for i in load_inventory(DATA / "psychobench_questionnaires" / "questionnaires.json", "bfi44")}
    assert len(items) == 44
    assert items["bfi-1"].statement == "I see myself as someone who is talkative." and items["bfi-1"].trait == "E"
    assert items["bfi-6"].reverse and items["bfi-6"].trait == "E"  # "Is reserved"
    assert items["bfi-2"].reverse and items["bfi-2"].trait == "A"  # "Tends to find fault with others"
    assert sum(i.reverse for i in items.values()) == 16
    assert {t: sum(i.trait == t for i in items.values()) for t in TRAITS} == {"O": 10, "C": 9, "E": 8, "A": 9, "N": 8}


@needs_data
def test_ipip_items_have_24_per_trait():
    items = load_inventory(DATA / "ipip_neo_120" / "questions_en.json", "ipip120")
    assert {t: sum(i.trait == t for i in items) for t in TRAITS} == dict.fromkeys(TRAITS, 24)
    worry = next(i for i in items if "worry about things" in i.statement)
    assert worry.statement == "I worry about things." and worry.trait == "N" and not worry.reverse


class PersonaScripted(ScriptedModel):
    """A steerable scripted model: under persona ``T+`` it fully agrees with plus-keyed items of trait T and
    disagrees with reverse-keyed ones (so every T item scores 5); under ``T-`` the opposite (scores 1);
    otherwise it answers 3 (all options equally likely)."""

    def __init__(self, items, persona=None):
        self.items, self.persona = items, persona
        super().__init__(loglik=self._loglik, name="scripted-pf")

    def _loglik(self, context, continuation):
        item = self.items[next(s for s in self.items if s in context[-1]["content"])]
        pole = next(iter(self.persona)) if isinstance(self.persona, dict) else None
        if pole is None or pole[0] != item.trait:
            return -1.0
        high = (pole[1] == "+") != item.reverse
        return 0.0 if continuation == ("5" if high else "1") else -30.0

    def with_persona(self, persona):
        if isinstance(persona, Routing):  # a routed situation: the router picked the strongest pole
            persona = {max(zip(persona.gates.values, POLES))[1]: 1.0}
        return PersonaScripted(self.items, persona)

    def route(self, texts):
        return [Routing(Activation((0, 0, 0, 0.9 if "sad" in t else -0.9, 0)),
                        Gates.from_mapping({"A+" if "sad" in t else "A-": 1.0}), t) for t in texts]  # fmt: skip


@needs_data
@pytest.mark.parametrize("inventory", ["ipip120", "bfi44"])
def test_experts_probe_separates_poles_by_four_points_with_a_perfect_scripted_model(inventory):
    task = Personality.load(DATA, limit=3, inventory=inventory, probe="experts")
    items = {p.item.statement: p.item for p in task.items}
    result = task.run(PersonaScripted(items))
    assert {result.metrics[f"separation_{t}"] for t in TRAITS} == {4.0}
    assert result.metrics["separation_mean"] == 4.0
    assert result.details["trait_scores"]["A+"]["A"] == 5.0 and result.details["trait_scores"]["A+"]["O"] == 3.0
    assert result.details["trait_scores"]["model"] == dict.fromkeys(TRAITS, 3.0)
    assert result.counts == {"answers": 11 * 15, "parsed": 165, "conditions": 11, "items": 15}


class PersonaDeaf(PersonaScripted):
    """Ignores every persona: all answers 3."""

    def with_persona(self, persona):
        return PersonaDeaf(self.items, None)


@needs_data
def test_one_task_run_on_two_models_does_not_reuse_the_first_models_personas():
    task = Personality.load(DATA, limit=1, probe="experts")
    items = {p.item.statement: p.item for p in task.items}
    assert task.run(PersonaScripted(items)).metrics["separation_mean"] == 4.0
    assert task.run(PersonaDeaf(items)).metrics["separation_mean"] == 0.0


@needs_data
def test_situations_probe_uses_the_routing_of_each_situation(tmp_path):
    situations = tmp_path / "s.jsonl"
    situations.write_text(
        '{"id": "grief", "messages": [{"role": "user", "content": "I am so sad"}], "activation": {"A": 0.9}}\n'
        '{"id": "crit", "text": "Rip my essay apart", "activation": {"A": -0.8}}\n'
    )
    task = Personality.load(DATA, limit=2, probe="situations", situations=str(situations))
    result = task.run(PersonaScripted({p.item.statement: p.item for p in task.items}))
    assert result.metrics["separation_A"] == 4.0 and "separation_O" not in result.metrics
    assert {f.path.rsplit("/", 1)[-1] for f in task.files} == {"questions_en.json", "s.jsonl"}


@needs_data
def test_prompts_probe_runs_on_any_model_with_pole_system_prompts():
    task = Personality.load(DATA, limit=1, probe="prompts")
    seen = set()
    model = ScriptedModel(loglik=lambda c, k: seen.add(c[0]["content"] if c[0]["role"] == "system" else "") or 0.0)
    result = task.run(model)
    assert len(seen - {""}) == 10 and result.metrics["separation_mean"] == 0.0
    assert any("blunt" in s for s in seen) and any("warm, kind" in s for s in seen)


@needs_data
def test_generation_scoring_parses_the_number_and_reports_the_parse_rate():
    task = Personality.load(DATA, limit=1, probe="prompts", scoring="generate")
    result = task.run(ScriptedModel(reply=lambda c: "4" if "system" != c[0]["role"] else "no idea"))
    assert result.metrics["parse_rate"] == pytest.approx(5 / 55)  # only the unprompted "model" condition parses
    assert LIKERT == ("1", "2", "3", "4", "5")


@needs_data
def test_probes_that_need_experts_refuse_plain_models_and_bad_configs_name_the_flag():
    with pytest.raises(UserError, match=r"--probe experts needs a PersonaFuse checkpoint.*use --probe prompts"):
        Personality.load(DATA, limit=1).run(ScriptedModel(loglik=lambda c, k: 0.0))
    with pytest.raises(ConfigError, match=r"--probe situations needs --situations FILE"):
        Personality.load(DATA, probe="situations")
    with pytest.raises(ConfigError, match=r"--inventory must be one of ipip120, bfi44; got 'neo'"):
        Personality.load(DATA, inventory="neo")
