"""What does not fit ends with a one-line PrunelabError and destroys nothing: a disk that fills
while a file or the result store is written, a model or a data set larger than the memory."""

import errno
import resource
import signal
import sqlite3

import pytest
import torch

from prunelab import data as pdata
from prunelab import models
from prunelab.cli.main import main
from prunelab.core.checkpoints import load_checkpoint, save_checkpoint
from prunelab.core.masks import Masks
from prunelab.errors import DataError, ModelError, StorageError
from prunelab.harness.runner import RunResult, RunSpec
from prunelab.harness.store import Store
from prunelab.utils import atomic_write_json, memory


def _full_disk_after(n_bytes):
    """A stand-in for ``Path.write_bytes`` that stores ``n_bytes`` and then finds the disk full."""
    def write(path, data):
        with open(path, "wb") as handle:
            handle.write(bytes(data)[:n_bytes])
        raise OSError(errno.ENOSPC, "No space left on device")
    return write


def _only_the(tmp_path, *names):
    """Every file under ``tmp_path`` (hidden temporary files included) is one of ``names``."""
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == sorted(names)


# --------------------------------------------------------------------------- disk full

def test_json_write_on_a_full_disk_keeps_the_previous_file(tmp_path, monkeypatch):
    target = atomic_write_json(tmp_path / "rounds.json", {"round": 1})
    before = target.read_bytes()
    monkeypatch.setattr("pathlib.Path.write_bytes", _full_disk_after(10))
    with pytest.raises(StorageError) as caught:
        atomic_write_json(target, {"round": 2, "padding": "x" * 1000})
    message = str(caught.value)
    assert message == (f"cannot write {target}: No space left on device; the previous file is unchanged; "
                       "free some space or write elsewhere")
    assert caught.value.errno == errno.ENOSPC and isinstance(caught.value, OSError)
    assert target.read_bytes() == before
    _only_the(tmp_path, "rounds.json")   # the half-written temporary file is gone


def test_checkpoint_write_on_a_full_disk_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    """safetensors reports the OS failure in its own exception type: it becomes a StorageError too."""
    import safetensors.torch
    from safetensors import SafetensorError

    torch.manual_seed(0)
    model = models.create("mlp", (1, 4, 4), 3, hidden=[8])
    path = save_checkpoint(tmp_path / "model.safetensors", model)
    before = path.read_bytes()

    def full(tensors, filename, metadata=None):   # as safetensors fails: part of the file written
        with open(filename, "wb") as handle:
            handle.write(safetensors.torch.save(tensors, metadata)[:100])
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    with torch.no_grad():
        model.fc1.weight.zero_()
    with pytest.raises(StorageError, match=r"^cannot write .*model.safetensors: No space left on device; "
                                           r"the previous file is unchanged; free some space or write elsewhere$"):
        save_checkpoint(path, model, Masks.ones(model))
    assert path.read_bytes() == before and load_checkpoint(path).masks is None
    _only_the(tmp_path, "model.safetensors")
    with pytest.raises(StorageError, match="nothing was written"):
        save_checkpoint(tmp_path / "new.safetensors", model)
    _only_the(tmp_path, "model.safetensors")


def test_a_real_write_failure_of_safetensors_is_a_storage_error(tmp_path):
    """No monkeypatch: the file-size limit makes the kernel refuse the write (EFBIG), as a full disk would."""
    torch.manual_seed(0)
    model = models.create("mlp", (1, 8, 8), 10, hidden=[256])
    path = save_checkpoint(tmp_path / "model.safetensors", models.create("linear", (1, 2, 2), 2))
    before = path.read_bytes()
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    old = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (50_000, hard))
    try:
        with pytest.raises(StorageError, match="File too large; the previous file is unchanged") as caught:
            save_checkpoint(path, model)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old)
    assert caught.value.errno == errno.EFBIG
    assert path.read_bytes() == before
    _only_the(tmp_path, "model.safetensors")


def test_a_command_whose_output_does_not_fit_on_the_disk_says_so_in_one_line(tmp_path, monkeypatch, capsys):
    import safetensors.torch
    from safetensors import SafetensorError

    def full(tensors, filename, metadata=None):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    out = tmp_path / "dense.safetensors"
    code = main(["train", "--model", "mlp", "--model-arg", "hidden=[8]", "--dataset", "digits", "--epochs", "1",
                 "--quiet", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and err == (f"prunelab: error: cannot write {out}: No space left on device; nothing was "
                                 "written; free some space or write elsewhere\n")
    _only_the(tmp_path)


def _result(seed, trace_rows=2, pad=""):
    spec = RunSpec("synthetic", "mlp", "magnitude", 0.5, seed=seed, dense={"epochs": 1})
    return RunResult(spec=spec, hash=spec.hash, family="oneshot", metrics={"sparsity": 0.5, "final_test_top1": 0.5},
                     phase_times={"prune": 0.1}, dense_cached=False,
                     traces={"retrain": [{"epoch": i, "note": pad} for i in range(trace_rows)]})


def test_a_store_that_fills_the_disk_keeps_every_complete_run(tmp_path):
    """SQLite's page limit fails a write exactly as a full disk does (SQLITE_FULL)."""
    with Store(tmp_path) as store:
        assert store.put(_result(0))
        pages = store._conn.execute("PRAGMA page_count").fetchone()[0]
        store._conn.execute(f"PRAGMA max_page_count = {pages}")
        with pytest.raises(StorageError, match=r"^cannot write to .*results.sqlite: database or disk is full; "
                                               r"the runs stored so far are intact; free some space"):
            store.put(_result(1, trace_rows=200, pad="x" * 500))
        assert len(store) == 1 and store.check() == [] and store.hashes() == {_result(0).hash}
        store._conn.execute("PRAGMA max_page_count = 1073741823")   # space again: the run goes in
        assert store.put(_result(1, trace_rows=200, pad="x" * 500))
        assert len(store) == 2 and store.check() == []
    with sqlite3.connect(tmp_path / "results.sqlite") as con:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_a_store_whose_commit_fails_rolls_the_run_back(tmp_path):
    with Store(tmp_path) as store:
        real = store._conn

        class CommitFails:   # the disk fills at the commit, after every row went in
            in_transaction = property(lambda self: real.in_transaction)

            def execute(self, sql, *args):
                if sql == "COMMIT":
                    raise sqlite3.OperationalError("database or disk is full")
                return real.execute(sql, *args)

            def executemany(self, *args):
                return real.executemany(*args)

        store._conn = CommitFails()
        with pytest.raises(StorageError, match="database or disk is full; the runs stored so far are intact"):
            store.put(_result(0))
        store._conn = real
        assert len(store) == 0 and store.check() == [] and not real.in_transaction
        assert store.put(_result(0)) and len(store) == 1


# --------------------------------------------------------------------------- memory

def test_a_model_far_larger_than_the_memory_is_refused_before_it_is_built():
    with pytest.raises(ModelError, match=r"^model 'mlp' with \{'hidden': \[1000000, 1000000\]\} does not fit in "
                                         r"memory: it needs 4\.0 TB, .* is available; use a smaller model"):
        models.create("mlp", (1, 8, 8), 10, hidden=[10**6, 10**6])


def test_a_model_larger_than_the_available_memory_is_refused(monkeypatch):
    monkeypatch.setattr(memory, "available_bytes", lambda: 1_000_000)
    with pytest.raises(ModelError, match=r"does not fit in memory: it needs 4\.5 MB, 1\.0 MB is available"):
        models.create("mlp", (1, 8, 8), 10, hidden=[1024, 1024])
    torch.manual_seed(0)
    monkeypatch.setattr(memory, "available_bytes", lambda: 5_000_000)
    small = models.create("mlp", (1, 8, 8), 10, hidden=[1024, 1024])
    torch.manual_seed(0)
    monkeypatch.setattr(memory, "available_bytes", lambda: None)   # unknown: no check
    assert all(torch.equal(a, b) for a, b in zip(small.parameters(),
                                                 models.create("mlp", (1, 8, 8), 10, hidden=[1024, 1024]).parameters()))


def test_the_size_check_draws_no_random_numbers():
    from prunelab.models.factory import get

    torch.manual_seed(0)
    checked = models.create("lenet5", (1, 28, 28), 10)
    after_checked = torch.rand(3)
    torch.manual_seed(0)
    bare = get("lenet5")((1, 28, 28), 10)   # the factory alone: the draws create made before the check
    assert torch.equal(torch.rand(3), after_checked)
    assert all(torch.equal(a, b) for a, b in zip(checked.state_dict().values(), bare.state_dict().values()))


def test_an_allocation_failure_while_building_is_a_model_error(monkeypatch):
    from prunelab.models import factory

    def out_of_memory(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate "
                           "memory: you tried to allocate 4000000000 bytes.\nException raised from ...")

    monkeypatch.setattr(factory, "_check_fits", lambda *args: None)
    monkeypatch.setattr(factory.registry, "get", lambda key: out_of_memory)
    with pytest.raises(ModelError) as caught:
        models.create("mlp", (1, 8, 8), 10)
    assert "does not fit in memory ([enforce fail" in str(caught.value) and "\n" not in str(caught.value)


def test_a_data_set_larger_than_the_available_memory_is_refused(monkeypatch):
    monkeypatch.setattr(memory, "available_bytes", lambda: 200_000)
    with pytest.raises(DataError, match=r"^data set 'digits' \(as float32\) does not fit in memory: it needs 460\.0 kB, "
                                        r"200\.0 kB is available; use fewer training samples"):
        pdata.load("digits")
    assert len(pdata.load("digits", limit=100).train) == 100   # 154 kB: it fits


def test_a_data_file_larger_than_the_available_memory_is_refused(tmp_path, monkeypatch):
    from prunelab.data.files import read_bytes

    path = tmp_path / "big"
    path.write_bytes(bytes(3_000_000))
    monkeypatch.setattr(memory, "available_bytes", lambda: 4_000_000)
    with pytest.raises(DataError, match=r"big does not fit in memory: more than .* of data, 4\.0 MB available"):
        read_bytes(path, "fix")


@pytest.mark.parametrize("error", [
    torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB\nmore detail"),
    RuntimeError("DefaultCPUAllocator: not enough memory: you tried to allocate 80000000000 bytes."),
    MemoryError(),
])
def test_running_out_of_memory_in_a_command_is_one_line(tmp_path, monkeypatch, capsys, error):
    def train(*args, **kwargs):
        raise error

    monkeypatch.setattr("prunelab.training.loop.train", train)
    code = main(["train", "--model", "mlp", "--dataset", "digits", "--epochs", "1", "--quiet",
                 "--out", str(tmp_path / "m.safetensors")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("prunelab: error: does not fit in memory: ") and "--batch-size" in err
    _only_the(tmp_path)


def test_other_runtime_errors_are_not_taken_for_memory(tmp_path, monkeypatch):
    def train(*args, **kwargs):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    monkeypatch.setattr("prunelab.training.loop.train", train)
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        main(["train", "--model", "mlp", "--dataset", "digits", "--epochs", "1", "--quiet",
              "--out", str(tmp_path / "m.safetensors")])
