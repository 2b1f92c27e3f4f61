"""``NAME=VALUE`` options (``--hparam``, ``--model-arg``): the value is JSON when it parses, else a string."""

from __future__ import annotations

import json
from typing import Iterable

from prunelab.errors import ConfigError


def parse_assignment(text: str, option: str = "--hparam") -> tuple[str, object]:
    """``"lr=0.1"`` → ``("lr", 0.1)``; ``"scope=layer"`` → ``("scope", "layer")``.

    Raises:
        ConfigError: ``text`` has no ``=`` or an empty name.
    """
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"{option} expects NAME=VALUE (VALUE in JSON or a plain string), got {text!r}")
    try:
        return key.strip(), json.loads(value)
    except json.JSONDecodeError:
        return key.strip(), value


def parse_assignments(items: Iterable[str] | None, option: str = "--hparam") -> dict:
    """Several ``NAME=VALUE`` texts as one dict (a later name wins)."""
    return dict(parse_assignment(text, option) for text in items or [])
