"""The package's structural rules, checked on the source tree.

- no module under ``src/prunelab`` is longer than 500 lines;
- at most six modules sit directly in ``src/prunelab``;
- layering: a package imports only from the packages below it, bottom first
  ``errors``, ``utils`` -> ``core`` -> ``data``, ``models`` (peers: neither imports the other) ->
  ``training`` -> ``methods`` -> ``api`` -> ``integrations`` -> ``export`` -> ``harness`` -> ``reproductions``
  -> ``cli``
  -> ``__init__``, ``__main__``. Every ``import`` statement counts, at module level or inside a
  function, and so does ``importlib.import_module("prunelab....")`` with a literal name;
- the repository stands alone: no source file, no Markdown or Python file under ``docs/`` or
  ``benchmarks/`` and not the README refers to notes kept outside it or to issue numbers.

Each test collects every violation and lists them all in its failure message.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "prunelab"
MAX_LINES = 500
MAX_TOP_LEVEL_MODULES = 6

#: Layer of each top-level package or module; an import must go to a strictly lower layer (or stay
#: inside its own package). ``utils`` sits just above ``errors`` (it raises prunelab's errors); ``api``
#: (the one-call ``prune``) just above ``methods``, so the CLI and the package may both use it;
#: ``integrations`` (callbacks for other frameworks' trainers) just above, built on both.
LAYERS = {
    "errors": 0.0, "utils": 0.5,
    "core": 1,
    "data": 2, "models": 2,
    "training": 3,
    "methods": 4, "api": 4.5, "integrations": 4.7,
    "export": 5,
    "harness": 6,
    "reproductions": 7,
    "cli": 8,
    "__init__": 10, "__main__": 10,
}

#: Text no file may contain, and why (one letter in brackets, so that this file, searched the same
#: way with grep, does not contain what it forbids).
FORBIDDEN = {
    r"paper[s]\.md": "a notes file kept outside the repository",
    r"field-note[s]": "notes kept outside the repository",
    r"share[d]/": "a folder outside the repository",
    r"DESIG[N]\.md": "a design document kept outside the repository",
    r"(?i)\bissu[e] [0-9]": "an issue number",
}


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def _concern(parts: tuple[str, ...], package: Path = PACKAGE) -> str:
    """The top-level package or module that ``prunelab.<parts...>`` belongs to."""
    if parts and ((package / parts[0]).is_dir() or (package / f"{parts[0]}.py").is_file()):
        return parts[0]
    return "__init__"   # ``prunelab`` itself, or a name re-exported by prunelab/__init__.py


def _own_concern(path: Path, package: Path = PACKAGE) -> str:
    relative = path.relative_to(package)
    return relative.parts[0] if len(relative.parts) > 1 else relative.stem


def _imported_concerns(path: Path, package: Path = PACKAGE) -> list[tuple[int, str, str]]:
    """Every prunelab import in ``path``, at any depth: (line, dotted name imported, its concern)."""
    dotted = ("prunelab", *path.relative_to(package).with_suffix("").parts)
    home = dotted[:-1]   # the package a relative import starts from (for __init__.py: its own)
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [tuple(alias.name.split(".")) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = home[: len(home) - node.level + 1] if node.level else ()
            module = base + (tuple(node.module.split(".")) if node.module else ())
            names = [module + (alias.name,) for alias in node.names]
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            names = [tuple(node.args[0].value.split("."))]   # a module imported by name at run time
        else:
            continue
        for name in names:
            if name[0] == "prunelab":
                found.append((node.lineno, ".".join(name), _concern(name[1:], package)))
    return found


def test_no_module_passes_500_lines():
    long = [f"{p.relative_to(ROOT)}: {n} lines" for p in _modules()
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES]
    assert not long, f"modules over {MAX_LINES} lines:\n" + "\n".join(long)


def test_top_level_holds_at_most_six_modules():
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(top) <= MAX_TOP_LEVEL_MODULES, f"{len(top)} modules directly in src/prunelab: {', '.join(top)}"


def test_every_concern_has_a_layer():
    concerns = {_own_concern(p) for p in _modules()}
    assert concerns <= set(LAYERS), f"not in the layer order: {sorted(concerns - set(LAYERS))}"


def test_imports_only_go_down_the_layers():
    wrong = []
    for path in _modules():
        own = _own_concern(path)
        for line, name, target in _imported_concerns(path):
            if target == own:
                continue
            if own not in LAYERS or target not in LAYERS or LAYERS[target] >= LAYERS[own]:
                wrong.append(f"{path.relative_to(ROOT)}:{line}: {own} imports {name} ({target})")
    assert not wrong, "imports that do not go to a lower layer:\n" + "\n".join(wrong)


def test_the_layer_check_sees_every_kind_of_import(tmp_path):
    package = tmp_path / "prunelab"
    for sub in ("core", "cli", "harness"):
        (package / sub).mkdir(parents=True)
    (package / "errors.py").write_text("")
    module = package / "core" / "late.py"
    module.write_text("import os\nimport prunelab\n\ndef f():\n    from prunelab.cli import main\n"
                      "    import prunelab.harness.store\n    from . import masks\n    from .. import errors\n"
                      "    from prunelab import TrainConfig\n    import importlib; importlib.import_module('prunelab.cli')\n")
    found = [(line, target) for line, _, target in _imported_concerns(module, package)]
    assert found == [(2, "__init__"), (5, "cli"), (6, "harness"), (7, "core"), (8, "errors"), (9, "__init__"),
                     (10, "cli")]
    assert _own_concern(module, package) == "core"


def _text_files() -> list[Path]:
    files = [p for p in (ROOT / "src").rglob("*") if p.is_file() and "__pycache__" not in p.parts
             and ".egg-info" not in str(p)]
    for folder in ("docs", "benchmarks"):
        files += [p for p in (ROOT / folder).rglob("*") if p.is_file() and p.suffix in (".md", ".py")]
    return sorted(files) + [ROOT / "README.md"]


def test_no_references_to_outside_notes_or_issue_numbers():
    found = []
    for path in _text_files():
        for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            for pattern in _forbidden_in(line):
                found.append(f"{path.relative_to(ROOT)}:{number}: {re.search(pattern, line).group(0)!r} "
                             f"({FORBIDDEN[pattern]})")
    assert not found, "references that do not stand alone:\n" + "\n".join(found)


def _forbidden_in(text: str) -> list[str]:
    return [pattern for pattern in FORBIDDEN if re.search(pattern, text)]


def test_the_reference_check_catches_each_kind():
    # the samples are assembled from pieces so that this file does not contain them either
    caught = ["see papers" + ".md §1.2", "field" + "-notes/x.md", "../share" + "d/DESIGN" + ".md", "(issue" + " 5)",
              "Issue" + " 12 asks"]
    passed = ["tissue 5", "issues were fixed", "the paper (Dong et al. 2017, Eq. 7)"]
    assert all(_forbidden_in(text) for text in caught)
    assert not any(_forbidden_in(text) for text in passed)
