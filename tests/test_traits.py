"""Trait/pole vocabulary, value types and the persona spec parser."""

from __future__ import annotations

import math

import pytest

from personafuse.traits import (
    POLES,
    Activation,
    Gates,
    PersonaError,
    activated_poles,
    parse_persona_spec,
    pole_index,
    trait_class,
)


def test_pole_order_is_fixed():
    assert POLES == ("O+", "O-", "C+", "C-", "E+", "E-", "A+", "A-", "N+", "N-")
    assert pole_index("A+") == 6


def test_activated_poles_uses_one_third_threshold():
    assert activated_poles({"O": 0.1, "C": 0.34, "E": -0.5, "A": 0.33, "N": -1 / 3}) == ["C+", "E-", "N-"]
    assert [trait_class(v) for v in (-0.5, -0.2, 0.0, 0.4)] == [0, 1, 1, 2]


def test_parse_persona_spec():
    gates = parse_persona_spec("A+=0.7, N-=0.3")
    assert gates.as_dict()["A+"] == 0.7 and gates.as_dict()["N-"] == 0.3
    assert math.isclose(gates.intensity, 1.0)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "empty --persona"),
        ("A+", "lacks '='"),
        ("Z+=0.5", r"unknown pole\(s\) \['Z\+'\]"),
        ("A+=x", "'x' for A\\+ is not a number"),
        ("A+=-0.1", "negative"),
        ("A+=nan", "must be finite"),
        ("A+=0.8,N-=0.5", "sum to 1.3000 > 1"),
    ],
)
def test_bad_persona_specs_name_the_value(spec, message):
    with pytest.raises(PersonaError, match=message):
        parse_persona_spec(spec)


def test_gates_and_activation_validate():
    with pytest.raises(PersonaError, match="gates need 10 values"):
        Gates((0.5, 0.5))
    with pytest.raises(PersonaError, match="outside \\[-1, 1\\]"):
        Activation((0, 0, 0, 1.5, 0))
    with pytest.raises(PersonaError, match="unknown trait"):
        Activation.from_mapping({"X": 0.5})
    assert Gates.from_mapping({"A+": 2.0, "N-": 2.0}, normalize=True).as_dict()["A+"] == 0.5
