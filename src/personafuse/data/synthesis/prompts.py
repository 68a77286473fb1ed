"""Versioned prompt templates, read from ``personafuse/data/prompts/<name>.<version>.txt``.

A template file has a ``[system]`` section (optional) and a ``[user]`` section, each a ``string.Template``
(``$name`` placeholders, so the JSON braces in the shapes need no escaping). A file without section headers is a
fragment (e.g. ``pole_guide``) pasted into other templates. Changing a prompt means adding a new version file,
so the ``prompt`` field of every stage row says which text produced it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from importlib import resources
from string import Template

__all__ = ["PromptTemplate", "load_fragment", "load_prompt", "prompt_names"]

_SECTION = re.compile(r"^\[(system|user)\]\s*$", re.MULTILINE)


def _read(filename: str) -> str:
    path = resources.files("personafuse.data").joinpath("prompts", filename)
    if not path.is_file():
        available = ", ".join(prompt_names()) or "none"
        raise FileNotFoundError(f"no prompt file {filename} in personafuse/data/prompts (available: {available})")
    return path.read_text(encoding="utf-8")


def prompt_names() -> list[str]:
    """The ``<name>.<version>`` of every shipped prompt file, sorted."""
    folder = resources.files("personafuse.data").joinpath("prompts")
    return sorted(p.name.removesuffix(".txt") for p in folder.iterdir() if p.name.endswith(".txt"))


@dataclass(frozen=True)
class PromptTemplate:
    """One versioned prompt: its id (``annotate.v1``) and the system and user templates."""

    name: str
    system: str | None
    user: str

    def placeholders(self) -> set[str]:
        """The ``$names`` the template needs."""
        found: set[str] = set()
        for text in (self.system or "", self.user):
            for match in Template.pattern.finditer(text):
                found.add(match.group("named") or match.group("braced") or "")
        found.discard("")
        return found

    def render(self, **values: str) -> list[dict[str, str]]:
        """The chat messages with every placeholder filled.

        Raises:
            KeyError: a placeholder without a value (a bug in the calling stage, not a user error).
        """
        messages = []
        if self.system:
            messages.append({"role": "system", "content": Template(self.system).substitute(values).strip()})
        messages.append({"role": "user", "content": Template(self.user).substitute(values).strip()})
        return messages


@cache
def load_prompt(name: str, version: str) -> PromptTemplate:
    """Load ``<name>.<version>.txt``.

    Raises:
        FileNotFoundError: no such prompt file; the message lists the shipped ones.
        ValueError: the file lacks a ``[user]`` section.
    """
    text = _read(f"{name}.{version}.txt")
    sections: dict[str, str] = {}
    matches = list(_SECTION.finditer(text))
    for i, match in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
        sections[match.group(1)] = text[match.end() : end].strip("\n")
    if "user" not in sections:
        raise ValueError(f"prompt file {name}.{version}.txt has no [user] section")
    return PromptTemplate(f"{name}.{version}", sections.get("system"), sections["user"])


@cache
def load_fragment(name: str, version: str) -> str:
    """The text of a fragment file ``<name>.<version>.txt`` (no sections), e.g. the pole guide."""
    return _read(f"{name}.{version}.txt").strip("\n")
