"""Fuzzing of every file reader: random bytes and damaged valid files (bit flips, truncation,
appended junk, changed length fields, edited headers) give a PrunelabError, never another
exception, a hang, a crash or a large allocation.

Each reader gets ``EXAMPLES`` derandomized hypothesis examples per kind of input, so the file is
deterministic and its run time bounded (about 15 s on one core). A reader that does not answer
within ``HANG_SECONDS`` fails its test (an alarm interrupts it).
"""

import gzip
import json
import pickle
import resource
import signal
import sqlite3
import struct
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

from prunelab import models  # noqa: E402
from prunelab.core.checkpoints import load_checkpoint, save_checkpoint  # noqa: E402
from prunelab.core.masks import Masks  # noqa: E402
from prunelab.data.cifar import _read_cifar_bin_batch, _read_cifar_py_batch  # noqa: E402
from prunelab.data.idx import read_idx  # noqa: E402
from prunelab.errors import PrunelabError  # noqa: E402
from prunelab.export.storage import load_sparse, save_sparse  # noqa: E402
from prunelab.harness.runner import RunResult, RunSpec, validate_all  # noqa: E402
from prunelab.harness.store import Store  # noqa: E402
from prunelab.harness.suites import load_suite_file  # noqa: E402

#: examples per reader and kind of input (damaged valid file, edited header, wrong values).
EXAMPLES = 200
#: a reader that takes longer than this on a file of a few kB hangs.
HANG_SECONDS = 10
FUZZ = settings(max_examples=EXAMPLES, deadline=timedelta(seconds=HANG_SECONDS), derandomize=True, database=None,
                print_blob=True, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
#: the peak resident memory may grow this much over the whole file (a lying size field must not
#: make a reader allocate what the header claims).
MAX_GROWTH_BYTES = 512 * 2**20


class Hang(Exception):
    pass


@contextmanager
def _alarm(seconds):
    def ring(*_):
        raise Hang(f"no answer after {seconds} s")

    old = signal.signal(signal.SIGALRM, ring)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@pytest.fixture(scope="module", autouse=True)
def bounded_memory():
    before = _peak_rss()
    yield
    assert _peak_rss() - before < MAX_GROWTH_BYTES


def survives(read, *args, names: str | None = None):
    """Call ``read(*args)``: it returns, or raises a PrunelabError with a message (that names the
    file ``names`` when given). The command line prints any message on one line."""
    try:
        with _alarm(HANG_SECONDS):
            read(*args)
    except PrunelabError as exc:
        assert str(exc).strip() and (names is None or names in str(exc)), str(exc)
        return exc
    return None


# --------------------------------------------------------------------------- damage

INTERESTING = [0, 1, 2, 7, 8, 255, 2**16, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**40, 2**63 - 1, 2**63, 2**64 - 1]


@st.composite
def damaged(draw, valid: bytes, length_fields=()):
    """``valid`` with one kind of damage. ``length_fields``: ``(offset, struct format)`` of size fields."""
    kinds = ["flip", "truncate", "append", "overwrite", "random"] + (["length"] if length_fields else [])
    kind = draw(st.sampled_from(kinds))
    b = bytearray(valid)
    if kind == "flip":
        for pos in draw(st.lists(st.integers(0, len(b) * 8 - 1), min_size=1, max_size=8)):
            b[pos // 8] ^= 1 << pos % 8
    elif kind == "truncate":
        del b[draw(st.integers(0, len(b) - 1)):]
    elif kind == "append":
        b += draw(st.binary(min_size=1, max_size=256))
    elif kind == "overwrite":   # a size-like field anywhere
        fmt = draw(st.sampled_from(["<I", ">I", "<Q", ">Q"]))
        pos = draw(st.integers(0, len(b) - struct.calcsize(fmt)))
        value = draw(st.sampled_from(INTERESTING) | st.integers(0, 2**64 - 1)) % 2 ** (8 * struct.calcsize(fmt))
        b[pos:pos + struct.calcsize(fmt)] = struct.pack(fmt, value)
    elif kind == "length":
        pos, fmt = draw(st.sampled_from(list(length_fields)))
        size = struct.calcsize(fmt)
        old = struct.unpack(fmt, b[pos:pos + size])[0]
        value = draw(st.sampled_from([old - 1, old + 1, old * 2, old // 2, len(b), len(b) * 1000] + INTERESTING)
                     | st.integers(0, 2 ** (8 * size) - 1))
        b[pos:pos + size] = struct.pack(fmt, value % 2 ** (8 * size))
    else:
        b = bytearray(draw(st.binary(max_size=2048)))
    return bytes(b)


JSON = st.recursive(st.none() | st.booleans() | st.integers(-2**64, 2**64) | st.floats() | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                    max_leaves=12)
#: values that look like sizes, shapes or names to a reader
PLAUSIBLE = (st.sampled_from(INTERESTING) | st.integers(-3, 2**62)
             | st.lists(st.sampled_from([0, 1, 3, 8, 2**20, 2**31, 2**40, -1]), max_size=4)
             | st.sampled_from(["F32", "U8", "BOOL", "F64", "I64", "dense", "csr", "gaps", "bitmap", "nonzero",
                                "indices", "torch.float32", "torch.uint8", "torch.bool", "param/0.weight"]))


def _edit(draw, doc):
    """Replace one value somewhere inside the JSON document ``doc`` (or add a key)."""
    if isinstance(doc, dict) and doc and draw(st.integers(0, 3)):
        key = draw(st.sampled_from(sorted(doc)))
        doc[key] = _edit(draw, doc[key])
        return doc
    if isinstance(doc, list) and doc and draw(st.integers(0, 3)):
        i = draw(st.integers(0, len(doc) - 1))
        doc[i] = _edit(draw, doc[i])
        return doc
    if isinstance(doc, dict) and draw(st.booleans()):
        doc[draw(st.sampled_from(["shape", "dtype", "data_offsets", "encoding", "rows", "cols", "x"]))] = draw(PLAUSIBLE)
        return doc
    return draw(PLAUSIBLE | JSON)


@st.composite
def edited_safetensors(draw, valid: bytes):
    """``valid`` (a safetensors file) with one value of its JSON header, or of the prunelab document
    in its metadata, replaced."""
    n = struct.unpack("<Q", valid[:8])[0]
    header = json.loads(valid[8:8 + n])
    if draw(st.booleans()):
        meta = header.setdefault("__metadata__", {})
        meta["prunelab"] = json.dumps(_edit(draw, json.loads(meta.get("prunelab", "{}"))))
    else:
        header = _edit(draw, header)
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + valid[8 + n:]


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


# --------------------------------------------------------------------------- valid files

@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    torch.manual_seed(0)
    model = models.create("mlp", (1, 4, 4), 3, hidden=[6])
    masks = Masks({n: torch.rand_like(p) > 0.5 for n, p in model.named_parameters() if p.dim() > 1})
    masks.apply(model)
    out = {"root": root}
    out["checkpoint"] = save_checkpoint(root / "c.safetensors", model, masks, metrics={"top1": 0.5}).read_bytes()
    out["sparse"] = save_sparse(root / "s.safetensors", model, masks, meta={"x": 1}).read_bytes()
    out["masks"] = masks.save(root / "m.safetensors").read_bytes()
    images = np.arange(5 * 4 * 4, dtype=np.uint8).reshape(5, 4, 4)
    out["idx"] = struct.pack(">I", 0x803) + struct.pack(">III", 5, 4, 4) + images.tobytes()
    out["idx.gz"] = gzip.compress(out["idx"], mtime=0)
    records = np.random.default_rng(0).integers(0, 256, (3, 3073), dtype=np.uint8)
    records[:, 0] = [0, 9, 4]
    out["cifar.bin"] = records.tobytes()
    batch = {b"data": records[:, 1:].copy(), b"labels": [0, 9, 4], b"batch_label": b"x"}
    out["cifar.py"] = pickle.dumps(batch, protocol=2)
    out["suite.toml"] = (b'name = "fuzz"\ndataset = "digits"\nmodels = ["mlp", {name = "fc", kwargs = {hidden = [8]}}]\n'
                         b'targets = [0.5, 0.75]\nseeds = [0, 1]\nbaselines = true\ndense = {epochs = 1, lr = 0.001}\n'
                         b'[[methods]]\nname = "magnitude"\nhparams = {scope = "layer"}\ntargets = [0.9]\n')
    doc = {"name": "fuzz", "dataset": "digits", "models": ["mlp", {"name": "fc", "kwargs": {"hidden": [8]}}],
           "targets": [0.5, 0.75], "seeds": [0, 1], "baselines": True, "dense": {"epochs": 1},
           "methods": [{"name": "magnitude", "hparams": {"scope": "layer"}, "targets": [0.9]}, "random"]}
    out["suite.json"] = json.dumps(doc).encode()
    out["suite.yaml"] = (b"name: fuzz\ndataset: digits\nmodels: [mlp]\ntargets: [0.5, 0.75]\nseeds: [0]\n"
                         b"dense: {epochs: 1}\nmethods:\n  - name: magnitude\n    hparams: {scope: layer}\n  - random\n")
    out["suite_doc"] = doc
    store_dir = root / "store"
    with Store(store_dir) as store:
        for i, target in enumerate((0.5, 0.75)):
            spec = RunSpec("synthetic", "mlp", "magnitude", target, seed=i, dense={"epochs": 1})
            store.put(RunResult(spec=spec, hash=spec.hash, family="oneshot",
                                metrics={"sparsity": target, "final_test_top1": 0.5},
                                phase_times={"prune": 0.1}, dense_cached=False,
                                traces={"retrain": [{"epoch": 1, "top1": 0.4}, {"epoch": 2, "top1": 0.5}]}))
        store.record_suite("fuzz", "two runs", "", 2)
    assert not (store_dir / "results.sqlite-wal").exists()   # everything is in the main file
    out["store"] = (store_dir / "results.sqlite").read_bytes()
    return out


def _target(files, name):
    return files["root"] / name


# --------------------------------------------------------------------------- safetensors files

SAFETENSORS_READERS = {
    "checkpoint": lambda p: load_checkpoint(p),
    "sparse": lambda p: load_sparse(p),
    "masks": lambda p: Masks.load(p),
}


@pytest.mark.parametrize("kind", sorted(SAFETENSORS_READERS))
def test_safetensors_readers_survive_damaged_files(files, kind):
    read = SAFETENSORS_READERS[kind]

    @FUZZ
    @given(st.data())
    def run(data):
        payload = data.draw(damaged(files[kind], length_fields=[(0, "<Q")]) | edited_safetensors(files[kind]))
        survives(read, _write(_target(files, f"fuzz-{kind}.safetensors"), payload), names=f"fuzz-{kind}.safetensors")

    run()


@pytest.mark.parametrize("kind", sorted(SAFETENSORS_READERS))
def test_every_safetensors_reader_reads_each_valid_file_or_refuses(files, kind):
    for source in ("checkpoint", "sparse", "masks"):   # a file of another kind: read or refused
        survives(SAFETENSORS_READERS[kind], _write(_target(files, f"other-{kind}.safetensors"), files[source]))


# --------------------------------------------------------------------------- IDX and CIFAR

IDX_LENGTHS = [(4, ">I"), (8, ">I"), (12, ">I"), (0, ">I")]


def test_idx_reader_survives_damaged_files(files):
    @FUZZ
    @given(damaged(files["idx"], IDX_LENGTHS))
    def run(payload):
        path = _write(_target(files, "fuzz-idx"), payload)
        survives(read_idx, path, 0x803, names=str(path))
        survives(read_idx, path, None, names=str(path))

    run()


def test_gzipped_idx_reader_survives_damage_inside_and_outside_the_gzip(files):
    @FUZZ
    @given(st.booleans(), st.data())
    def run(inside, data):
        if inside:
            payload = gzip.compress(data.draw(damaged(files["idx"], IDX_LENGTHS)), mtime=0)
        else:
            payload = data.draw(damaged(files["idx.gz"], [(len(files["idx.gz"]) - 4, "<I")]))
        survives(read_idx, _write(_target(files, "fuzz-idx.gz"), payload), 0x803, names="fuzz-idx.gz")

    run()


def test_cifar_binary_reader_survives_damaged_files(files):
    @FUZZ
    @given(damaged(files["cifar.bin"]))
    def run(payload):
        survives(_read_cifar_bin_batch, _write(_target(files, "fuzz.bin"), payload), "fix it", names="fuzz.bin")

    run()


def test_cifar_python_reader_survives_damaged_pickles(files):
    @FUZZ
    @given(damaged(files["cifar.py"]))
    def run(payload):
        survives(_read_cifar_py_batch, _write(_target(files, "fuzz_batch"), payload), "fix it", names="fuzz_batch")

    run()


# --------------------------------------------------------------------------- suite files

def read_suite(path):
    """What ``prunelab bench --suite FILE`` does before it trains: read the file, check every run."""
    validate_all(load_suite_file(path).specs)


@pytest.mark.parametrize("suffix", ["toml", "json", "yaml"])
def test_suite_reader_survives_damaged_files(files, suffix):
    if suffix == "yaml":
        pytest.importorskip("yaml")

    @FUZZ
    @given(damaged(files[f"suite.{suffix}"]))
    def run(payload):
        survives(read_suite, _write(_target(files, f"fuzz.{suffix}"), payload))

    run()


@pytest.mark.parametrize("suffix", ["json", "yaml"])
def test_suite_reader_survives_wrong_values(files, suffix):
    yaml = pytest.importorskip("yaml") if suffix == "yaml" else None

    @FUZZ
    @given(st.data())
    def run(data):
        doc = _edit(data.draw, json.loads(json.dumps(files["suite_doc"])))
        text = json.dumps(doc) if yaml is None else yaml.safe_dump(doc)
        survives(read_suite, _write(_target(files, f"values.{suffix}"), text.encode()))

    run()


# --------------------------------------------------------------------------- result store

SQLITE_LENGTHS = [(16, ">H"), (28, ">I"), (32, ">I"), (36, ">I"), (44, ">I"), (56, ">I"), (100 + 3, ">H")]


def _read_store(outdir):
    with Store(outdir) as store:
        store.results()
        store.check()
        store.suites()
        len(store)


def test_result_store_survives_damaged_files_and_is_never_replaced(files):
    @FUZZ
    @given(damaged(files["store"], SQLITE_LENGTHS))
    def run(payload):
        outdir = files["root"] / "fuzz-store"
        outdir.mkdir(exist_ok=True)
        for leftover in outdir.iterdir():
            leftover.unlink()
        db = _write(outdir / "results.sqlite", payload)
        if survives(_read_store, outdir, names="results.sqlite") is not None:   # refused: the user's file is left as it was
            assert db.read_bytes() == payload

    run()


def test_a_foreign_sqlite_database_is_refused_untouched(tmp_path):
    db = tmp_path / "results.sqlite"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE songs (title TEXT)")
    con.commit()
    con.close()
    before = db.read_bytes()
    with pytest.raises(PrunelabError, match="not a prunelab result store"):
        Store(tmp_path)
    assert db.read_bytes() == before


# --------------------------------------------------------------------------- lying sizes

def _traced_peak(read, *args) -> tuple[PrunelabError | None, int]:
    """``survives(read, *args)`` and the peak of Python-tracked memory it allocated."""
    import tracemalloc

    tracemalloc.start()
    try:
        return survives(read, *args), tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _gzip_of_zeros(n: int) -> bytes:
    import zlib

    packer = zlib.compressobj(9, zlib.DEFLATED, 31)   # gzip framing
    chunk = bytes(1 << 20)
    return b"".join([packer.compress(chunk) for _ in range(n >> 20)] + [packer.flush()])


def test_gzip_bomb_under_an_idx_header_is_refused_without_decompressing_it(tmp_path):
    header = struct.pack(">IIII", 0x803, 5, 4, 4)     # 80 bytes of images declared
    bomb = tmp_path / "train-images-idx3-ubyte.gz"
    bomb.write_bytes(gzip.compress(header, mtime=0) + _gzip_of_zeros(64 << 20))   # 64 MB of zeros after it
    assert bomb.stat().st_size < 1 << 20
    error, peak = _traced_peak(read_idx, bomb, 0x803)
    assert "its header says 5x4x4 (96 bytes) but it holds more" in str(error)
    assert peak < 16 << 20


def test_an_idx_header_declaring_exabytes_allocates_nothing(tmp_path):
    path = _write(tmp_path / "x", struct.pack(">IIIII", 0x803, 2**32 - 1, 2**32 - 1, 2**32 - 1, 7) + b"\0" * 100)
    error, peak = _traced_peak(read_idx, path, 0x803)
    assert "(79228162458924105385300197391 bytes) but it holds 120 bytes" in str(error)
    assert peak < 64 << 20   # reads go in chunks of 16 MB, whatever a header says


def test_a_pickle_length_field_of_exabytes_allocates_nothing(tmp_path):
    frame = b"\x80\x04\x95" + struct.pack("<Q", 2**62) + b"}."   # PROTO 4, FRAME of 2**62 bytes, {}
    error, peak = _traced_peak(_read_cifar_py_batch, _write(tmp_path / "data_batch_1", frame), "fix it")
    assert "pickle data was truncated" in str(error) and peak < 64 << 20


def test_a_checkpoint_whose_config_asks_for_a_huge_model_is_refused_before_building_it(files, tmp_path):
    n = struct.unpack("<Q", files["checkpoint"][:8])[0]
    header = json.loads(files["checkpoint"][8:8 + n])
    doc = json.loads(header["__metadata__"]["prunelab"])
    doc["model"]["kwargs"]["hidden"] = [2**15, 2**15]   # 4 GB of weights; the file holds 123 numbers
    header["__metadata__"]["prunelab"] = json.dumps(doc)
    text = json.dumps(header).encode()
    path = _write(tmp_path / "big.safetensors", struct.pack("<Q", len(text)) + text + files["checkpoint"][8 + n:])
    rss = _peak_rss()
    with pytest.raises(PrunelabError, match="asks for 1074429955 parameters but the file holds 123"):
        load_checkpoint(path)
    assert _peak_rss() - rss < 64 << 20


@pytest.mark.parametrize("text", ["a: &a [*a]\n",
                                  "dataset: digits\nmethods: [random]\ndata_kwargs: {x: &x [*x]}\n",
                                  "a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\n" + "".join(
                                      f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
                                      for p, c in zip("abcdefgh", "bcdefghi"))],
                         ids=["self-reference", "nested-self-reference", "a-billion-values"])
def test_yaml_aliases_that_refer_to_themselves_or_explode_are_refused(tmp_path, text):
    pytest.importorskip("yaml")
    error = survives(read_suite, _write(tmp_path / "s.yaml", text.encode()))
    assert "too large or too deeply nested" in str(error)


def test_a_suite_of_millions_of_runs_is_refused_before_they_are_built(tmp_path):
    doc = {"dataset": "digits", "targets": [0.5] * 1000, "seeds": list(range(1000))}
    path = _write(tmp_path / "s.json", json.dumps(doc).encode())
    with pytest.raises(PrunelabError, match=r"3000000 runs \(models x methods x targets x seeds\), more than 100000"):
        load_suite_file(path)
