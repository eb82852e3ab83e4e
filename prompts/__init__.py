"""Prompt templates as files, rendered with Jinja `StrictUndefined`, loaded by name.

A prompt set is one YAML file in this folder (e.g. ``agent.yaml``) mapping keys to Jinja templates.
Its hash (sha256 of the file's bytes, first 16 hex digits) is recorded on every verdict.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import cache
from importlib import resources

import jinja2
import yaml


class PromptError(KeyError):
    def __str__(self) -> str:
        return self.args[0]


@dataclass(frozen=True)
class PromptSet:
    """A named set of templates.

    Attributes:
        name: file stem ("agent").
        templates: key -> Jinja source.
        hash: sha256 (16 hex) of the file's bytes.
    """

    name: str
    templates: dict[str, str]
    hash: str
    _env: jinja2.Environment = field(
        default_factory=lambda: jinja2.Environment(
            undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True, autoescape=False
        ),
        repr=False,
        compare=False,
    )

    def render(self, key: str, **variables) -> str:
        """Render template `key`; a missing variable raises `jinja2.UndefinedError`."""
        try:
            source = self.templates[key]
        except KeyError:
            msg = f"prompt set {self.name!r} has no template {key!r}; it has: {', '.join(sorted(self.templates))}"
            raise PromptError(msg) from None
        return self._env.from_string(source).render(**variables).strip()


@cache
def load_prompts(name: str = "agent") -> PromptSet:
    """Load `prompts/<name>.yaml` (package data)."""
    try:
        raw = resources.files(__package__).joinpath(f"{name}.yaml").read_bytes()
    except FileNotFoundError:
        msg = f"no prompt set {name!r} in the prompts package"
        raise PromptError(msg) from None
    data = yaml.safe_load(raw)
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        msg = f"prompts/{name}.yaml must map keys to template strings"
        raise PromptError(msg)
    return PromptSet(name=name, templates=data, hash=hashlib.sha256(raw).hexdigest()[:16])
