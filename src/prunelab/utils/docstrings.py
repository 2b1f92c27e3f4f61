"""Dataclass fields described at run time: their defaults, and their documentation read from
Google-style docstrings.

A dataclass documents its fields once, in the ``Attributes:`` section of its docstring; ``prunelab
info METHOD`` and the command-line help of every generated option read them from there.
"""

from __future__ import annotations

import dataclasses
import inspect
import re

_ENTRY = re.compile(r"^ {4}(\w+(?:, \w+)*): ?(.*)$")


def attribute_docs(doc: str | None) -> dict[str, str]:
    """``name -> text`` from the ``Attributes:`` section of a Google-style docstring.

    An entry may name several fields (``p, q: the exponents.``); continuation lines are joined
    with single spaces.

    Args:
        doc: the docstring (None or empty: no entries).

    Returns:
        The documented names, in docstring order, each with its text.
    """
    docs: dict[str, str] = {}
    current, in_attrs = None, False
    for line in inspect.cleandoc(doc or "").splitlines():
        if not line.strip():
            continue
        if line.strip() == "Attributes:":
            in_attrs = True
            continue
        if not in_attrs:
            continue
        if not line.startswith(" "):  # a new section ends the attributes
            break
        match = _ENTRY.match(line)
        if match:
            current = [n.strip() for n in match.group(1).split(",")]
            for n in current:
                docs[n] = match.group(2).strip()
        elif current:
            for n in current:
                docs[n] = (docs[n] + " " + line.strip()).strip()
    return docs


def class_attribute_docs(cls: type) -> dict[str, str]:
    """:func:`attribute_docs` of ``cls`` and of its bases; a subclass's entry replaces its base's.

    Args:
        cls: a (data)class.

    Returns:
        ``name -> text`` for every field documented on the class or a base.
    """
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        docs.update(attribute_docs(klass.__dict__.get("__doc__")))
    return docs


def field_defaults(cls: type) -> dict:
    """``field -> default`` of the dataclass ``cls`` (a factory's value for a ``default_factory``
    field; :data:`dataclasses.MISSING` for a field without a default), in field order."""
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
        else:
            out[f.name] = dataclasses.MISSING
    return out
