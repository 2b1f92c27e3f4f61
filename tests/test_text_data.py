"""Tests of the ``text`` data set (prunelab.data.text): byte windows of local text files.

Corpora are tiny folders written to tmp_path; one test reads the standard library with tiny caps.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform

import numpy as np
import pytest
import torch

from prunelab import data as pdata
from prunelab.data import text as ptext
from prunelab.errors import ConfigError, DataError


def bucket(rel: str) -> int:
    """The split bucket, computed here independently of the module."""
    return int(hashlib.sha256(rel.encode()).hexdigest()[:8], 16) % 100


def names_for(counts: dict) -> dict:
    """File names ``f<i>.txt`` picked so that each split gets ``counts[split]`` files."""
    want = dict(counts)
    out = {"train": [], "val": [], "test": []}
    i = 0
    while any(len(out[s]) < want[s] for s in out):
        name = f"f{i}.txt"
        b = bucket(name)
        split = "train" if b < 90 else "val" if b < 95 else "test"
        if len(out[split]) < want[split]:
            out[split].append(name)
        i += 1
    return out


def content(name: str, size: int) -> bytes:
    """Distinct printable bytes per file."""
    rng = np.random.default_rng(int(hashlib.sha256(name.encode()).hexdigest()[:8], 16))
    return bytes(rng.integers(97, 123, size).astype(np.uint8))


@pytest.fixture
def corpus(tmp_path):
    """7 files: 3 train, 2 val, 2 test (by path hash), 40 to 60 bytes each."""
    root = tmp_path / "corpus"
    root.mkdir()
    names = names_for({"train": 3, "val": 2, "test": 2})
    files = {}
    for split in names:
        for k, name in enumerate(names[split]):
            files[name] = content(name, 40 + 10 * k)
            (root / name).write_bytes(files[name])
    return root, names, files


def stream_of(split) -> bytes:
    """The bytes a split's contiguous windows cover."""
    x, y = split.x.numpy(), split.y.numpy()
    return bytes(np.concatenate([x.reshape(-1), y[-1, -1:]]).astype(np.uint8))


def test_split_of_is_the_sha256_bucket_and_stable():
    for rel in ("json/decoder.py", "a.txt", "dir/sub/ü.txt", "f0.txt"):
        assert ptext.path_bucket(rel) == bucket(rel)
    # Fixed values: a change of the hashing would silently move files between splits.
    assert ptext.path_bucket("json/decoder.py") == 39 and ptext.split_of("json/decoder.py") == "train"
    assert [ptext.split_of(n) for n in ("f0.txt", "a.txt")] == ["train" if bucket(n) < 90 else
                                                                 "val" if bucket(n) < 95 else "test"
                                                                 for n in ("f0.txt", "a.txt")]


def test_windows_are_contiguous_and_shifted_by_one():
    x, y = ptext.windows(b"abcdefghij", 3)
    assert [bytes(r) for r in x] == [b"abc", b"def", b"ghi"]
    assert [bytes(r) for r in y] == [b"bcd", b"efg", b"hij"]
    x, y = ptext.windows(b"abcdefghij", 4)   # (10 - 1) // 4 = 2 windows, the tail dropped
    assert [bytes(r) for r in x] == [b"abcd", b"efgh"] and [bytes(r) for r in y] == [b"bcde", b"fghi"]
    assert ptext.windows(b"abc", 3)[0].shape == (0, 3)


def test_file_hash_split_windows_and_manifest(corpus):
    root, names, files = corpus
    ds = pdata.load("text", data_dir=root, context=8)
    tokens = ds.info["tokens"]
    assert tokens["split"] == "file-hash" and tokens["source"] == "directory"
    assert (tokens["unit"], tokens["bytes_per_token"], tokens["vocab"]) == ("byte", 1.0, 256)
    assert ds.in_shape == (8,) and ds.num_classes == 256 and ds.name == "text"
    for split in ("train", "val", "test"):
        order = sorted(names[split], key=lambda n: hashlib.sha256(n.encode()).hexdigest())
        expected = b"\n".join(files[n] for n in order)
        part = getattr(ds, split)
        assert part.x.dtype == torch.int64 and part.y.dtype == torch.int64
        assert len(part) == (len(expected) - 1) // 8
        assert torch.equal(part.y[:, :-1], part.x[:, 1:])
        assert stream_of(part) == expected[: len(part) * 8 + 1]
        assert tokens["bytes"][split] == len(expected) and tokens["files"][split] == len(order)
        assert ds.info["manifest"][split] == [[n, len(files[n]), hashlib.sha256(files[n]).hexdigest()]
                                              for n in order]
    text = json.dumps(ds.info["manifest"], sort_keys=True, separators=(",", ":"))
    assert tokens["manifest_hash"] == hashlib.sha256(text.encode()).hexdigest()
    assert ds.info["val_size"] == len(ds.val) and ds.info["limit"] is None


def test_split_is_deterministic_and_files_keep_their_split(corpus, tmp_path):
    root, names, files = corpus
    first = pdata.load("text", data_dir=root, context=8)
    again = pdata.load("text", data_dir=root, context=8)
    assert first.info["tokens"]["manifest_hash"] == again.info["tokens"]["manifest_hash"]
    assert torch.equal(first.train.x, again.train.x)
    # Adding a file moves no other file to another split.
    extra = names_for({"train": 4, "val": 0, "test": 0})["train"][3]
    (root / extra).write_bytes(content(extra, 50))
    grown = pdata.load("text", data_dir=root, context=8)
    for split in ("val", "test"):
        assert grown.info["manifest"][split] == first.info["manifest"][split]
    assert {e[0] for e in grown.info["manifest"]["train"]} == set(names["train"]) | {extra}


def test_manifest_hash_changes_when_a_file_changes(corpus):
    root, names, files = corpus
    before = pdata.load("text", data_dir=root, context=8).info["tokens"]["manifest_hash"]
    path = root / names["val"][0]
    changed = bytearray(files[names["val"][0]])
    changed[5] = ord("Z")
    stat = path.stat()
    path.write_bytes(bytes(changed))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))   # same size: new mtime
    after = pdata.load("text", data_dir=root, context=8)
    assert after.info["tokens"]["manifest_hash"] != before
    assert stream_of(after.val).count(b"Z") >= 1


def test_caps_cut_the_last_file(corpus):
    root, names, files = corpus
    ds = pdata.load("text", data_dir=root, context=8, max_bytes=70, eval_bytes=30)
    order = sorted(names["train"], key=lambda n: hashlib.sha256(n.encode()).hexdigest())
    joined = b"\n".join(files[n] for n in order)
    assert ds.info["tokens"]["bytes"] == {"train": 70, "val": 30, "test": 30}
    assert stream_of(ds.train) == joined[: len(ds.train) * 8 + 1] and len(ds.train) == 69 // 8
    first, second = ds.info["manifest"]["train"]
    cut = 70 - len(files[order[0]]) - 1
    assert first[1] == len(files[order[0]])
    assert second == [order[1], cut, hashlib.sha256(files[order[1]][:cut]).hexdigest()]
    assert [e[1] for e in ds.info["manifest"]["val"]] == [30]


def test_non_text_hidden_and_empty_files_are_skipped(corpus):
    root, names, files = corpus
    baseline = pdata.load("text", data_dir=root, context=8).info["tokens"]["manifest_hash"]
    picks = names_for({"train": 9, "val": 3, "test": 3})
    for split in ("train", "val", "test"):   # names that would land in each split
        (root / picks[split][-1]).write_bytes(b"binary\0data" * 10)
    (root / ".hidden.txt").write_bytes(b"x" * 100)
    (root / ".git").mkdir()
    (root / ".git" / "config.txt").write_bytes(b"y" * 100)
    (root / picks["train"][-2]).write_bytes(b"")
    ds = pdata.load("text", data_dir=root, context=8)
    assert ds.info["tokens"]["manifest_hash"] == baseline


def test_subfolders_use_relative_posix_paths(tmp_path):
    root = tmp_path / "c"
    (root / "sub" / "deeper").mkdir(parents=True)
    for group in names_for({"train": 2, "val": 1, "test": 1}).values():
        for name in group:
            (root / name).write_bytes(content(name, 30))
    nested = "sub/deeper/n.txt"
    (root / nested).write_bytes(content(nested, 30))
    ds = pdata.load("text", data_dir=root, context=4)
    split = "train" if bucket(nested) < 90 else "val" if bucket(nested) < 95 else "test"
    assert ds.info["tokens"]["split"] == "file-hash"
    assert nested in [e[0] for e in ds.info["manifest"][split]]


def test_position_split_for_few_files(tmp_path):
    root = tmp_path / "two"
    root.mkdir()
    a, b = b"a" * 300, b"0123456789" * 40
    (root / "a.txt").write_bytes(a)
    (root / "b.txt").write_bytes(b)
    ds = pdata.load("text", data_dir=root, context=4)
    whole = a + b"\n" + b
    cut_val, cut_test = len(whole) * 90 // 100, len(whole) * 95 // 100
    assert ds.info["tokens"]["split"] == "position"
    assert ds.info["tokens"]["bytes"] == {"train": cut_val, "val": cut_test - cut_val, "test": len(whole) - cut_test}
    assert stream_of(ds.train) == whole[: len(ds.train) * 4 + 1]
    assert stream_of(ds.test) == whole[cut_test: cut_test + len(ds.test) * 4 + 1]
    assert ds.info["manifest"]["train"] == [
        ["a.txt", 300, hashlib.sha256(a).hexdigest()],
        ["b.txt", cut_val - 301, hashlib.sha256(b[: cut_val - 301]).hexdigest()]]
    assert [e[0] for e in ds.info["manifest"]["val"]] == ["b.txt"]


def test_limit_picks_seeded_training_windows(corpus):
    root, _, _ = corpus
    full = pdata.load("text", data_dir=root, context=4)
    part = pdata.load("text", data_dir=root, context=4, limit=5, seed=3)
    index = np.sort(np.random.default_rng(3).permutation(len(full.train))[:5])
    assert torch.equal(part.train.x, full.train.x[index]) and torch.equal(part.train.y, full.train.y[index])
    assert torch.equal(part.val.x, full.val.x) and torch.equal(part.test.y, full.test.y)
    other = pdata.load("text", data_dir=root, context=4, limit=5, seed=4)
    assert not torch.equal(other.train.x, part.train.x)
    assert part.info["limit"] == 5


def test_errors_say_what_to_do(tmp_path, corpus):
    root, _, _ = corpus
    with pytest.raises(DataError, match="does not exist"):
        pdata.load("text", data_dir=tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no non-empty regular file"):
        pdata.load("text", data_dir=tmp_path / "empty")
    (tmp_path / "bin").mkdir()
    for i in range(4):
        (tmp_path / "bin" / f"{i}.dat").write_bytes(b"\0\1\2" * 20)
    with pytest.raises(DataError, match="no text file"):
        pdata.load("text", data_dir=tmp_path / "bin")
    (tmp_path / "small").mkdir()
    (tmp_path / "small" / "a.txt").write_bytes(b"tiny text")
    with pytest.raises(DataError, match="smaller context"):
        pdata.load("text", data_dir=tmp_path / "small", context=8)
    with pytest.raises(ConfigError, match="own validation split"):
        pdata.load("text", data_dir=tmp_path / "missing", val_size=0.1)   # refused before any file is read
    with pytest.raises(ConfigError, match="own validation split"):
        pdata.load("text", data_dir=root, val_size=0)
    with pytest.raises(ConfigError, match="no option"):
        pdata.load("text", data_dir=root, contxt=4)
    with pytest.raises(ConfigError, match="context"):
        pdata.load("text", data_dir=root, context=0)
    with pytest.raises(ConfigError, match="eval_bytes"):
        pdata.load("text", data_dir=root, context=8, eval_bytes=8)


def test_default_source_is_the_stdlib_with_tiny_caps():
    ds = pdata.load("text", context=64, max_bytes=20_000, eval_bytes=2_000)
    tokens = ds.info["tokens"]
    assert tokens["source"] == "python-stdlib" and tokens["python"] == platform.python_version()
    assert tokens["split"] == "file-hash"
    assert tokens["bytes"] == {"train": 20_000, "val": 2_000, "test": 2_000}
    assert len(ds.train) == 19_999 // 64 and len(ds.val) == 1_999 // 64
    for split in ("train", "val", "test"):
        for rel, _, _ in ds.info["manifest"][split]:
            parts = rel.split("/")
            assert rel.endswith(".py") and ptext.split_of(rel) == split
            assert not set(parts[:-1]) & {"test", "tests", "idlelib", "site-packages", "__pycache__"}


def test_image_data_sets_are_unchanged():
    ds = pdata.load("synthetic", n_train=50, n_test=20, val_size=10, seed=1)
    assert ds.train.x.dtype == torch.float32 and len(ds.val) == 10 and "tokens" not in ds.info


def test_cli_trains_gpt_on_a_folder(corpus, tmp_path, capsys):
    pytest.importorskip("safetensors")
    from prunelab.cli.main import main

    root, _, _ = corpus
    out = tmp_path / "lm.safetensors"
    code = main(["train", "--dataset", "text", "--data-dir", str(root), "--data-option", "context=8",
                 "--model", "gpt", "--model-arg", "layers=1", "--model-arg", "width=16", "--model-arg", "heads=2",
                 "--epochs", "1", "--batch-size", "8", "--quiet", "--device", "cpu", "-o", str(out)])
    assert code == 0 and out.exists()
    from prunelab.core.checkpoints import load_checkpoint

    checkpoint = load_checkpoint(out)
    assert checkpoint.model(torch.zeros(2, 8, dtype=torch.long)).shape == (2, 8, 256)
    assert checkpoint.meta["extra"]["dataset"] == "text"
    # eval takes the folder and context the checkpoint records; --data-option overrides them.
    capsys.readouterr()
    assert main(["eval", str(out), "--device", "cpu"]) == 0
    assert "n=" in capsys.readouterr().out
    assert main(["eval", str(out), "--device", "cpu", "--data-option", "context=4"]) == 2
    assert "(4,)" in capsys.readouterr().err
