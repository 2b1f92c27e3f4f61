"""prunelab.utils: the registry idiom, atomic writes, plain JSON, NAME=VALUE parsing, report rendering."""

import json
import math

import numpy as np
import pytest
import torch

from prunelab import data, methods, models
from prunelab.errors import ConfigError, PrunelabError
from prunelab.harness import suites
from prunelab.utils import (Document, Figure, Paragraph, Registry, Section, Table, atomic_path, atomic_write_json,
                            atomic_write_text, new_figure, parse_assignment, parse_assignments, plain_json, png_bytes,
                            write_document)


# -- Registry ----------------------------------------------------------------------------------------

def test_registry_register_get_create_list():
    reg = Registry("widget", ConfigError, normalize=str.lower)

    @reg.register("b")
    def make_b(size=1):
        return ("b", size)

    reg.register("a", lambda: "a")
    assert reg.list() == ["a", "b"]
    assert reg.get("B") is make_b
    assert reg.create("b", size=3) == ("b", 3)
    assert "A" in reg and "c" not in reg and len(reg) == 2
    with pytest.raises(ConfigError, match="'b' is registered twice"):
        reg.register("B", make_b)  # normalised, and taken even by the same object


def test_registry_unknown_name_lists_known_and_duplicate_is_an_error():
    reg = Registry("widget", ConfigError)
    reg.register("one", int)
    with pytest.raises(ConfigError, match=r"unknown widget 'two'; known: one"):
        reg.get("two")
    with pytest.raises(ConfigError, match="registered twice"):
        reg.register("one", float)


@pytest.mark.parametrize("registry", [methods.registry, models.registry, data.registry, suites.registry],
                         ids=["methods", "models", "data", "suites"])
def test_every_concern_uses_the_one_registry_idiom(registry):
    assert isinstance(registry, Registry)
    names = registry.list()
    assert names and names == sorted(names)
    assert all(name in registry for name in names)
    with pytest.raises(PrunelabError, match="no-such-entry"):
        registry.get("no-such-entry")


@pytest.mark.parametrize("package", [methods, models, data])
def test_no_module_level_list_shadows_the_builtin(package):
    assert not hasattr(package, "list")


# -- atomic writes and JSON --------------------------------------------------------------------------

def test_atomic_path_keeps_the_old_file_when_the_write_fails(tmp_path):
    target = tmp_path / "result.json"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed mid-write")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]
    atomic_write_text(target, "new")
    assert target.read_text() == "new"


def test_plain_json_and_atomic_write_json(tmp_path):
    obj = {"t": torch.tensor(1.5), "v": torch.ones(2), "n": np.float32(0.25), "a": np.arange(3), (1, 2): "tuple key",
           "nan": float("nan"), "inf": math.inf, "nested": [(1, 2), {"p": tmp_path}]}
    plain = plain_json(obj)
    assert plain["t"] == 1.5 and plain["v"] == [1.0, 1.0] and plain["n"] == 0.25 and plain["a"] == [0, 1, 2]
    assert plain["(1, 2)"] == "tuple key" and plain["nested"] == [[1, 2], {"p": str(tmp_path)}]
    assert math.isnan(plain["nan"]) and plain["inf"] == math.inf
    strict = plain_json(obj, finite=True)
    assert strict["nan"] is None and strict["inf"] is None
    path = atomic_write_json(tmp_path / "out.json", obj)
    assert json.loads(path.read_text()) == json.loads(json.dumps(strict))


def test_parse_assignment():
    assert parse_assignment("lr=0.1") == ("lr", 0.1)
    assert parse_assignment("scope=layer") == ("scope", "layer")
    assert parse_assignment("hidden=[32, 16]") == ("hidden", [32, 16])
    assert parse_assignment("expr=a=b") == ("expr", "a=b")
    assert parse_assignments(["a=1", "b=true", "a=2"]) == {"a": 2, "b": True}
    for bad in ("novalue", "=3"):
        with pytest.raises(ConfigError, match="--model-arg expects NAME=VALUE"):
            parse_assignment(bad, "--model-arg")


# -- rendering ---------------------------------------------------------------------------------------

def test_write_document_renders_markdown_and_self_contained_html(tmp_path):
    def draw() -> bytes:
        fig = new_figure(2, 1.5)
        fig.add_subplot().plot([0, 1], [1, 0])
        return png_bytes(fig)

    png = draw()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and png == draw()  # no timestamp: same drawing, same bytes
    doc = Document("Title", ["intro line"], [Section("First & second", [
        Paragraph("a <b> paragraph"), Table(["method", "top-1"], [["magnitude", "88.64"]], "caption"),
        Figure("curve", png, "the curve")])])
    paths = write_document(doc, tmp_path / "out")
    md = paths["markdown"].read_text()
    assert md.splitlines()[:4] == ["# Title", "", "intro line", ""]
    assert "| method | top-1 |\n|---|--:|\n| magnitude | 88.64 |" in md
    assert "![curve](figures/00-first-second-00-curve.png)" in md
    assert [p.name for p in paths["figures"]] == ["00-first-second-00-curve.png"]
    assert paths["figures"][0].read_bytes() == png
    page = paths["html"].read_text()
    assert "a &lt;b&gt; paragraph" in page and "data:image/png;base64," in page
    assert "src=\"http" not in page and "href=" not in page  # nothing outside the page
