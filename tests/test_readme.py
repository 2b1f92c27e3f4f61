"""The README's Python examples, run as written.

Every ```python block of README.md runs, in order, in one temporary working directory. A block
that defines everything it uses runs in a namespace of its own. A block that uses names it does
not define (``model``, ``data``, ``masks``) continues the README's story: it runs in a copy of the
namespace left by the latest earlier block that defines all of those names (models and masks
deep-copied, so each continuation starts from the same state, whatever ran before it). A block
that registers a pruning method is followed by one use of that method, which is unregistered
afterwards so that no other test sees it.

The code is compiled under the README's path with the README's line numbers, so a traceback points
at the failing line of README.md, and every failure message starts with ``README.md line N``.
"""

from __future__ import annotations

import ast
import builtins
import copy
import os
import sys
import types
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import nn

import prunelab
from prunelab.core.masks import Masks

README = Path(__file__).resolve().parents[1] / "README.md"
FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")


@dataclass(frozen=True)
class Example:
    """One ```python block: its first code line in README.md, its code, and what it defines and uses."""

    line: int
    code: str
    defines: frozenset[str]
    free: frozenset[str]


def _names(code: str) -> tuple[frozenset[str], frozenset[str]]:
    """(top-level names the code binds, names it reads without binding them anywhere)."""
    tree = ast.parse(code)
    top = set()
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            top.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            top.add(node.name)
        else:
            top.update(n.id for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store))
    bound, read = set(top), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            (read if isinstance(node.ctx, ast.Load) else bound).add(node.id)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            bound.update((a.asname or a.name).split(".")[0] for a in node.names)
    return frozenset(top), frozenset(read - bound - set(dir(builtins)))


def python_examples(text: str) -> list[Example]:
    """Every ```python block of ``text``, in order."""
    lines = text.splitlines()
    found, i = [], 0
    while i < len(lines):
        if lines[i].strip() == "```python":
            end = i + 1
            while end < len(lines) and lines[end].strip() != "```":
                end += 1
            code = "\n".join(lines[i + 1:end])
            try:
                defines, free = _names(code)
            except SyntaxError as exc:
                raise AssertionError(f"README.md line {i + 2 + (exc.lineno or 1) - 1}: syntax error: {exc.msg}") from None
            found.append(Example(line=i + 2, code=code, defines=defines, free=free))
            i = end
        i += 1
    return found


EXAMPLES = python_examples(README.read_text(encoding="utf-8"))
_namespaces: dict[int, dict] = {}   # README line -> namespace the example left
_failed: set[int] = set()            # README lines of examples that raised (not run again)


def _method_entries() -> dict:
    """The method registry's own dict (read to find, and edited to remove, what an example registers)."""
    return prunelab.methods.registry._entries


@pytest.fixture(scope="module", autouse=True)
def readme_cwd(tmp_path_factory):
    """Run every example in one scratch folder, as a reader would in an empty directory."""
    previous = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("readme"))
    try:
        yield
    finally:
        os.chdir(previous)
        for example in EXAMPLES:
            sys.modules.pop(f"readme_line_{example.line}", None)


def _continued_from(example: Example) -> Example | None:
    """The latest earlier example that defines every name ``example`` uses without defining it."""
    earlier = [e for e in EXAMPLES if e.line < example.line and example.free <= e.defines]
    return earlier[-1] if earlier else None


def _fresh_copy(namespace: dict) -> dict:
    return {k: copy.deepcopy(v) if isinstance(v, (nn.Module, Masks)) else v for k, v in namespace.items()}


def _run(example: Example) -> tuple[dict, list[str]]:
    """Execute ``example`` (after the example it continues, once).

    A method it registers is used once and unregistered, whether or not that succeeds.

    Returns:
        (its namespace, the names of the methods it registered).
    """
    if example.free:
        base = _continued_from(example)
        if base is None:
            raise AssertionError(f"README.md line {example.line}: uses {', '.join(sorted(example.free))}, "
                                 "which no earlier example defines")
        if base.line in _failed:
            raise AssertionError(f"README.md line {example.line}: continues the example at line {base.line}, "
                                 "which fails")
        if base.line not in _namespaces:
            _run(base)
    # a real module: dataclasses (and pickling) look classes up in sys.modules by __module__
    module = types.ModuleType(f"readme_line_{example.line}")
    if example.free:
        module.__dict__.update({k: v for k, v in _fresh_copy(_namespaces[base.line]).items()
                                if not k.startswith("__")})
    namespace = module.__dict__
    sys.modules[module.__name__] = module
    before = set(_method_entries())
    # padded so that line numbers in tracebacks are README.md's own
    code = compile("\n" * (example.line - 1) + example.code, str(README), "exec")
    try:
        try:
            exec(code, namespace)
        except Exception as exc:
            _failed.add(example.line)
            raise AssertionError(f"README.md line {example.line}: the example fails: {type(exc).__name__}: {exc}") from exc
        registered = sorted(set(_method_entries()) - before)
        for name in registered:
            _use_registered_method(name)
    finally:
        for name in set(_method_entries()) - before:
            del _method_entries()[name]
    _namespaces[example.line] = namespace
    return namespace, registered


def _use_registered_method(name: str) -> None:
    """Prune a fresh LeNet-300-100 once with the method the README registered; it must prune exactly
    the requested share of the weights, as every one-shot method does."""
    assert name in prunelab.methods.registry.list()
    torch.manual_seed(0)
    model = prunelab.models.create("lenet-300-100", (1, 28, 28), 10)
    masks = prunelab.prune(model, name, sparsity=0.75)
    total = sum(m.numel() for m in masks.values())
    kept = sum(int(m.sum()) for m in masks.values())
    assert total - kept == round(0.75 * total)
    for param_name, mask in masks.items():
        weight = dict(model.named_parameters())[param_name]
        assert bool((weight[~mask] == 0).all())   # the masks are applied to the model


def test_readme_has_python_examples():
    assert len(EXAMPLES) >= 5
    assert any("@register(" in e.code for e in EXAMPLES)


@pytest.mark.skipif(not FASHION_MNIST.is_file(), reason="the examples train on Fashion-MNIST, not installed here")
@pytest.mark.parametrize("example", EXAMPLES, ids=[f"line{e.line}" for e in EXAMPLES])
def test_readme_example_runs(example):
    before = prunelab.methods.registry.list()
    _, registered = _run(example)
    if "@register(" in example.code:
        assert registered, f"README.md line {example.line}: the example registers no method"
    assert prunelab.methods.registry.list() == before   # an example's method does not outlive it
