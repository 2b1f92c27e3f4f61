"""The native kernel's build: packaged source, cache, compiler fallbacks, PRUNELAB_NATIVE=0."""

import logging
from importlib import resources
from pathlib import Path

import pytest
import torch
from torch import nn

from prunelab import models
from prunelab.core.masks import Masks
from prunelab.errors import ConfigError
from prunelab.export import make_permanent, native, sparse_layers, to_sparse
from test_export import _global_magnitude  # the same masks as test_export's

BACKENDS = ["torch"] + (["native"] if native.load() is not None else [])
TOL = dict(atol=1e-5, rtol=1e-5)


def test_native_status_agrees_with_load():
    info = native.status()
    assert info["available"] == (native.load() is not None) == ("native" in BACKENDS)
    assert isinstance(info["seconds"], float) and info["seconds"] >= 0
    if info["available"]:
        assert Path(info["path"]).is_file() and info["reason"] in ("built", "cached")
        assert Path(info["compiler"]).is_file() and tuple(info["flags"]) in native._FLAG_SETS
    else:
        assert info["reason"]


def _count_compiles(monkeypatch) -> list:
    """Record every compiler invocation that builds a shared library (``--version`` probes are not)."""
    compiles, run = [], native.subprocess.run

    def counting_run(cmd, *args, **kwargs):
        if "-shared" in cmd:
            compiles.append(cmd)
        return run(cmd, *args, **kwargs)

    monkeypatch.setattr(native.subprocess, "run", counting_run)
    return compiles


@pytest.mark.skipif("native" not in BACKENDS, reason="native kernel unavailable (no C compiler?)")
def test_native_kernel_builds_from_packaged_source_and_is_cached(monkeypatch, tmp_path):
    folder = resources.files("prunelab.export") / "csrc"
    packaged = "\n".join((folder / name).read_text() for name in native.SOURCES)
    assert native.kernel_source() == packaged and "pl_sparse_forward" in packaged
    assert {p.name for p in folder.iterdir() if p.name.endswith(".c")} == set(native.SOURCES)
    monkeypatch.setenv("PRUNELAB_CACHE", str(tmp_path))
    compiles = _count_compiles(monkeypatch)
    native.reset()
    try:
        assert native.load() is not None
        first = native.status()
        assert first["reason"] == "built" and len(compiles) >= 1
        library = Path(first["path"])
        assert library.parent == tmp_path / "kernels" and library.name.startswith("prunelab_sparse_")
        assert [p.name for p in library.parent.iterdir()] == [library.name]   # no leftover temp files
        built_at = library.stat().st_mtime_ns
        compiles.clear()
        native.reset()
        assert native.load() is not None
        second = native.status()
        assert second["reason"] == "cached" and second["path"] == first["path"] and not compiles
        assert library.stat().st_mtime_ns == built_at
        # the cache key covers the source: an edited kernel is compiled anew, beside the old one
        monkeypatch.setattr(native, "kernel_source", lambda: packaged + "\n/* edited */\n")
        native.reset()
        assert native.load() is not None and native.status()["reason"] == "built" and compiles
        assert native.status()["path"] != first["path"] and library.is_file()
    finally:
        native.reset()


def test_no_compiler_falls_back_to_torch_with_one_warning(monkeypatch, tmp_path, caplog):
    torch.manual_seed(0)
    model = models.create("lenet5", (1, 28, 28), 10)
    make_permanent(model, _global_magnitude(model, 0.9))
    x = torch.randn(7, 1, 28, 28)
    with torch.no_grad():
        reference = to_sparse(model, policy="always", backends=("torch",))(x)
        dense = model.eval()(x)
    monkeypatch.delenv("PRUNELAB_CC", raising=False)
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    monkeypatch.setattr(native.shutil, "which", lambda name: None)   # not even the `cc` fallback
    native.reset()
    try:
        with caplog.at_level(logging.WARNING, logger="prunelab.export"):
            outputs = []
            for _ in range(2):
                fast = to_sparse(model, policy="always")
                assert {m.backend for m in sparse_layers(fast).values()} == {"torch"}
                assert fast.sparse_report["native"]["available"] is False
                with torch.no_grad():
                    outputs.append(fast(x))
        warnings = [r for r in caplog.records if r.name == "prunelab.export" and r.levelno == logging.WARNING]
        assert len(warnings) == 1 and "no C compiler found" in warnings[0].getMessage()
        assert "no-such-cc" in warnings[0].getMessage()
        for out in outputs:
            assert torch.equal(out, reference)
            torch.testing.assert_close(out, dense, **TOL)
    finally:
        native.reset()


def test_failed_build_degrades_to_torch(monkeypatch, tmp_path):
    fake = tmp_path / "fakecc"
    fake.write_text('#!/bin/sh\nif [ "$1" = "--version" ]; then echo fakecc 1.0; exit 0; fi\necho "fakecc: error" >&2\nexit 1\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PRUNELAB_CC", str(fake))
    monkeypatch.setenv("PRUNELAB_CACHE", str(tmp_path / "cache"))
    native.reset()
    try:
        assert native.load() is None
        assert "compilation failed" in native.status()["reason"]
        layer = nn.Linear(6, 4)
        fast = to_sparse(nn.Sequential(layer), policy="always")
        assert fast[0].backend == "torch"
        monkeypatch.setenv("PRUNELAB_CC", str(tmp_path / "no-such-compiler"))
        native.reset()
        assert native.load() is None and "no C compiler" in native.status()["reason"]
    finally:
        monkeypatch.delenv("PRUNELAB_CC")
        monkeypatch.delenv("PRUNELAB_CACHE")
        native.reset()


def test_without_native_kernel_torch_path_is_used(monkeypatch):
    monkeypatch.setenv("PRUNELAB_NATIVE", "0")
    native.reset()
    try:
        assert native.load() is None and "PRUNELAB_NATIVE" in native.status()["reason"]
        model = models.create("lenet-300-100", (1, 28, 28), 10)
        make_permanent(model, _global_magnitude(model, 0.9))
        fast = to_sparse(model, policy="always")
        assert {m.backend for m in sparse_layers(fast).values()} == {"torch"}
        with pytest.raises(ConfigError, match="native"):
            to_sparse(model, policy="always", backends=("native",))
        x = torch.randn(5, 1, 28, 28)
        with torch.no_grad():
            torch.testing.assert_close(fast(x), model(x), **TOL)
    finally:
        monkeypatch.delenv("PRUNELAB_NATIVE")
        native.reset()
