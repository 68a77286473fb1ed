"""Persona presets: named fixed mixes that the server lists as models (``personafuse:<name>``).

vLLM lists each LoRA adapter as a model; a preset is the PersonaFuse analogue, a fixed gate mix served under
its own model id, so that a client that can only pick a model (lm-eval, most chat UIs) can still pick a persona.
Add one with :func:`register_preset`; the built-ins follow the seed corpus' domains (docs/data.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from personafuse.traits import Gates, PersonaError

PRESET_PREFIX = "personafuse:"
"""Model ids of presets are ``PRESET_PREFIX + name``."""


@dataclass(frozen=True)
class Preset:
    """A named fixed persona mix."""

    name: str
    """Short kebab-case name; the model id is ``personafuse:<name>``."""
    description: str
    """One line for ``/v1/models`` and the docs."""
    gates: Gates
    """The fixed expert gates."""

    @property
    def model_id(self) -> str:
        """The id under which ``/v1/models`` lists this preset."""
        return PRESET_PREFIX + self.name


PRESETS: dict[str, Preset] = {}
"""The registry of presets, by name."""


def register_preset(name: str, description: str, gates: Mapping[str, float]) -> Preset:
    """Add a preset to :data:`PRESETS` and return it.

    Raises:
        PersonaError: a malformed name, a duplicate, or invalid gates.
    """
    if not name or not all(c.isalnum() or c == "-" for c in name) or name != name.lower():
        raise PersonaError(f"preset name {name!r} must be lower-case letters, digits and '-', e.g. 'grief-support'")
    if name in PRESETS:
        raise PersonaError(f"preset {name!r} is already registered; pick another name")
    preset = Preset(name, description, Gates.from_mapping(gates))
    PRESETS[name] = preset
    return preset


def find_preset(name: str) -> Preset | None:
    """The preset called ``name`` or with model id ``name`` (``personafuse:<name>``), else None."""
    if name.startswith(PRESET_PREFIX):
        name = name[len(PRESET_PREFIX) :]
    return PRESETS.get(name)


register_preset("grief-support", "warm, calm and gentle: loss, grief, bad news", {"A+": 0.5, "N-": 0.35, "E-": 0.15})
register_preset("crisis-calm", "steady and reassuring under stress or panic", {"N-": 0.5, "A+": 0.3, "C+": 0.2})
register_preset("code-review", "precise, thorough and frank about bugs", {"C+": 0.6, "A-": 0.2, "N-": 0.2})
register_preset(
    "blunt-feedback", "direct, critical feedback on plans and pitches", {"A-": 0.45, "C+": 0.35, "E+": 0.2}
)
register_preset("brainstorm", "curious, imaginative and energetic ideation", {"O+": 0.6, "E+": 0.4})
register_preset("celebration", "enthusiastic and upbeat for good news", {"E+": 0.6, "A+": 0.4})
register_preset("tutor", "patient, structured and encouraging teaching", {"C+": 0.4, "A+": 0.35, "O+": 0.25})
