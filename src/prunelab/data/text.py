"""``text``: byte-level language-modelling data built from local text files (nothing downloaded).

Tokens are bytes (vocabulary 256, one byte per token). ``load("text", context=T)`` gives splits of
int64 windows ``x`` of shape ``(n, T)`` and ``y`` = ``x`` shifted by one byte: window ``i`` of a
split's byte stream is ``x = stream[i*T : i*T+T]``, ``y = stream[i*T+1 : i*T+T+1]``; every full
window is kept, the tail is dropped, windows do not overlap.

Where the text comes from:

* by default, the source files (``*.py``) of the Python standard library of the running
  interpreter (``sysconfig.get_paths()["stdlib"]``), without ``site-packages``/``dist-packages``,
  the ``test``, ``tests`` and ``idlelib`` folders and ``__pycache__``; the corpus thus depends on
  the Python version, which ``info["tokens"]["python"]`` records;
* with ``data_dir`` (``--data-dir DIR``): every regular, non-hidden, non-empty file under ``DIR``
  (recursively; symbolic links are not followed) that is text, meaning it has no NUL byte. Other
  files are skipped.

Split by file. Each file goes to train, val or test by the sha256 of its relative path (POSIX
form, UTF-8): the first 8 hex digits as a number, modulo 100, below 90 is train, below 95 val,
else test. The assignment of a file thus never depends on the other files. Within a split, files
are taken in the order of their path hashes, joined with one ``b"\\n"``, until the split's cap is
reached (the last file is cut): ``max_bytes`` for train, ``eval_bytes`` each for val and test.
When a split would get less than one window (``context + 1`` bytes), as in a folder of fewer
than three files, the whole text (files in path order, joined with ``b"\\n"``) is split by
position instead: its first 90% train, the next 5% val, the last 5% test (each capped the same
way); ``info["tokens"]["split"]`` says which (``"file-hash"`` or ``"position"``).

Provenance. ``info["manifest"]`` lists, per split, ``[relative path, bytes used, sha256 of the
bytes used]`` for every file that contributes; ``info["tokens"]["manifest_hash"]`` is the sha256
of that manifest's JSON (sorted keys, no spaces), so it changes when any byte used changes.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import stat
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from prunelab.data.datasets import RawData, register
from prunelab.errors import ConfigError, DataError

SPLITS = ("train", "val", "test")
#: Percent buckets of the path hash: below 90 train, below 95 val, else test.
TRAIN_PERCENT, VAL_PERCENT = 90, 95
#: Folders of the standard library that are not part of the corpus.
STDLIB_EXCLUDED = frozenset({"site-packages", "dist-packages", "test", "tests", "idlelib", "__pycache__"})
_SEPARATOR = b"\n"
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Corpus:
    """The three byte streams of a text corpus and where their bytes came from.

    Attributes:
        streams: split name → the split's bytes.
        manifest: split name → ``[relative path, bytes used, sha256 hex]`` per contributing file.
        split: ``"file-hash"`` or ``"position"`` (see the module docstring).
    """

    streams: dict
    manifest: dict
    split: str


def path_bucket(relative: str) -> int:
    """The percent bucket (0-99) of a relative path: the first 8 hex digits of its sha256, mod 100.

    Example:
        >>> path_bucket("json/decoder.py") == int(hashlib.sha256(b"json/decoder.py").hexdigest()[:8], 16) % 100
        True
    """
    return int(_path_hash(relative)[:8], 16) % 100


def split_of(relative: str) -> str:
    """The split (``"train"``, ``"val"`` or ``"test"``) a file of this relative path goes to.

    Example:
        >>> split_of("json/decoder.py") in ("train", "val", "test")
        True
    """
    bucket = path_bucket(relative)
    return "train" if bucket < TRAIN_PERCENT else "val" if bucket < VAL_PERCENT else "test"


def _path_hash(relative: str) -> str:
    return hashlib.sha256(relative.encode("utf-8", "surrogateescape")).hexdigest()


def _walk(root: Path, stdlib: bool) -> list[tuple[str, Path]]:
    """(relative POSIX path, path) of every candidate file under ``root``, sorted by relative path."""
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".") and not (stdlib and d in STDLIB_EXCLUDED)]
        for name in files:
            if name.startswith(".") or (stdlib and not name.endswith(".py")):
                continue
            path = Path(folder) / name
            found.append((path.relative_to(root).as_posix(), path))
    return sorted(found)


def _fingerprint(files: list[tuple[str, Path]]) -> tuple:
    """(relative path, mtime, size) of every regular non-empty file: the in-process cache key."""
    out = []
    for rel, path in files:
        try:
            info = path.lstat()
        except OSError:
            continue   # vanished since the listing
        if stat.S_ISREG(info.st_mode) and info.st_size > 0:
            out.append((rel, info.st_mtime_ns, info.st_size))
    return tuple(out)


def _scan(path: Path, keep: int) -> tuple[bytes, int] | None:
    """The first ``keep`` bytes of ``path`` and its size, or None when it has a NUL byte (not text)."""
    head, size = [], 0
    try:
        with open(path, "rb") as handle:
            while chunk := handle.read(_CHUNK):
                if b"\0" in chunk:
                    return None
                if size < keep:
                    head.append(chunk[: keep - size])
                size += len(chunk)
    except OSError as err:
        raise DataError(f"cannot read {path}: {err.strerror or err}; check its permissions or "
                        f"remove it from the folder") from err
    return b"".join(head), size


def _take_by_hash(root: Path, files: list[str], cap: int) -> tuple[bytes, list]:
    """The stream of ``files`` (in path-hash order) joined with one newline, cut at ``cap`` bytes."""
    parts, manifest, used = [], [], 0
    for rel in sorted(files, key=_path_hash):
        room = cap - used - (len(_SEPARATOR) if parts else 0)
        if room <= 0:
            break
        scanned = _scan(root / rel, room)
        if scanned is None or not scanned[0]:
            continue
        head = scanned[0]
        used += len(head) + (len(_SEPARATOR) if parts else 0)
        parts.append(head)
        manifest.append([rel, len(head), hashlib.sha256(head).hexdigest()])
    return _SEPARATOR.join(parts), manifest


def _read_range(root: Path, sized: list[tuple[str, int]], lo: int, hi: int) -> tuple[bytes, list]:
    """Bytes ``[lo, hi)`` of the files' concatenation (one newline between files), and its manifest."""
    parts, manifest, offset = [], [], 0
    for index, (rel, size) in enumerate(sized):
        start, end = max(lo, offset), min(hi, offset + size)
        if start < end:
            try:
                with open(root / rel, "rb") as handle:
                    handle.seek(start - offset)
                    piece = handle.read(end - start)
            except OSError as err:
                raise DataError(f"cannot read {root / rel}: {err.strerror or err}") from err
            if len(piece) != end - start:
                raise DataError(f"{root / rel} changed while it was read; load the data again")
            parts.append(piece)
            manifest.append([rel, len(piece), hashlib.sha256(piece).hexdigest()])
        offset += size
        if index + 1 < len(sized):
            if lo <= offset < hi:
                parts.append(_SEPARATOR)
            offset += len(_SEPARATOR)
    return b"".join(parts), manifest


@functools.lru_cache(maxsize=4)
def _corpus(root: str, fingerprint: tuple, max_bytes: int, eval_bytes: int, min_bytes: int) -> Corpus:
    """The corpus of the files ``fingerprint`` lists under ``root`` (cached while they are unchanged)."""
    base = Path(root)
    caps = {"train": max_bytes, "val": eval_bytes, "test": eval_bytes}
    by_split = {name: [] for name in SPLITS}
    for rel, _, _ in fingerprint:
        by_split[split_of(rel)].append(rel)
    streams, manifest = {}, {}
    for name in SPLITS:
        streams[name], manifest[name] = _take_by_hash(base, by_split[name], caps[name])
    if all(len(streams[name]) >= min_bytes for name in SPLITS):
        return Corpus(streams, manifest, "file-hash")

    sized = []
    for rel, _, _ in fingerprint:
        scanned = _scan(base / rel, 0)
        if scanned is not None and scanned[1]:
            sized.append((rel, scanned[1]))
    if not sized:
        raise DataError(f"{root} holds no text file (every file has a NUL byte); put text files "
                        f"(UTF-8 or any encoding without NUL bytes) in it or pass another --data-dir")
    total = sum(size for _, size in sized) + len(_SEPARATOR) * max(len(sized) - 1, 0)
    cut_val, cut_test = total * TRAIN_PERCENT // 100, total * VAL_PERCENT // 100
    ranges = {"train": (0, cut_val), "val": (cut_val, cut_test), "test": (cut_test, total)}
    for name, (lo, hi) in ranges.items():
        streams[name], manifest[name] = _read_range(base, sized, lo, min(hi, lo + caps[name]))
    short = [name for name in SPLITS if len(streams[name]) < min_bytes]
    if short:
        raise DataError(
            f"the text under {root} ({total} bytes in {len(sized)} file(s)) is too little for context "
            f"{min_bytes - 1}: split by position (90/5/5), {', '.join(short)} would get less than one "
            f"window ({min_bytes} bytes); add text files or pass a smaller context "
            f"(--data-option context=N)"
        )
    return Corpus(streams, manifest, "position")


def manifest_hash(manifest: dict) -> str:
    """sha256 hex of the manifest's JSON (sorted keys, compact separators, ASCII)."""
    text = json.dumps(manifest, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def windows(stream: bytes, context: int) -> tuple[np.ndarray, np.ndarray]:
    """Non-overlapping next-byte windows of ``stream``: ``x[i] = stream[i*T:i*T+T]``, ``y`` one later.

    Args:
        stream: the bytes of one split.
        context: the window length ``T``.

    Returns:
        Read-only uint8 arrays ``x`` and ``y`` of shape ``(n, T)``, ``n = (len(stream) - 1) // T``.

    Example:
        >>> x, y = windows(b"abcdefg", 3)
        >>> bytes(x[1]), bytes(y[1])
        (b'def', b'efg')
    """
    data = np.frombuffer(stream, dtype=np.uint8)
    count = max(len(data) - 1, 0) // context
    return (data[: count * context].reshape(count, context),
            data[1: count * context + 1].reshape(count, context))


def _positive(name: str, value, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ConfigError(f"text option {name} must be an integer >= {low}, got {value!r}")
    return int(value)


@register("text", default_val_size=0, own_val_split=True)
def _load_text(data_dir=None, context: int = 128, max_bytes: int = 2_000_000, eval_bytes: int = 200_000,
               **kwargs) -> RawData:
    """Byte-level language-modelling windows of local text (see :mod:`prunelab.data.text`).

    Args:
        data_dir: a folder of text files; None for the Python standard library's sources.
        context: the window length in bytes (the model's context), >= 1.
        max_bytes: at most this many training bytes (the training stream is cut there).
        eval_bytes: at most this many bytes each for val and test.

    Returns:
        :class:`RawData` with uint8 windows of all three splits, ``tokens`` and ``manifest``.

    Raises:
        ConfigError: an unknown option or a bad value.
        DataError: the folder is missing or holds too little text.
    """
    if kwargs:
        raise ConfigError(f"dataset 'text' has no option(s) {', '.join(sorted(kwargs))}; "
                          f"its options are context, max_bytes and eval_bytes")
    context = _positive("context", context)
    max_bytes = _positive("max_bytes", max_bytes, context + 1)
    eval_bytes = _positive("eval_bytes", eval_bytes, context + 1)
    stdlib = data_dir is None
    root = Path(sysconfig.get_paths()["stdlib"] if stdlib else data_dir).expanduser()
    if not root.is_dir():
        what = "the Python standard library folder" if stdlib else "data_dir"
        raise DataError(f"{what} {str(root)!r} does not exist or is not a folder; pass a folder of text "
                        f"files with --data-dir")
    root = root.resolve()
    fingerprint = _fingerprint(_walk(root, stdlib))
    if not fingerprint:
        raise DataError(f"{root} holds no non-empty regular file; put text files (UTF-8 or any "
                        f"encoding without NUL bytes) in it or pass another --data-dir")
    corpus = _corpus(str(root), fingerprint, max_bytes, eval_bytes, context + 1)
    arrays = {name: windows(corpus.streams[name], context) for name in SPLITS}
    tokens = {
        "unit": "byte", "bytes_per_token": 1.0, "vocab": 256,
        "manifest_hash": manifest_hash(corpus.manifest),
        "files": {name: len(corpus.manifest[name]) for name in SPLITS},
        "bytes": {name: len(corpus.streams[name]) for name in SPLITS},
        "source": "python-stdlib" if stdlib else "directory",
        "root": str(root), "split": corpus.split, "context": context,
        "max_bytes": max_bytes, "eval_bytes": eval_bytes,
    }
    if stdlib:
        tokens["python"] = platform.python_version()
    origin = f"Python {platform.python_version()} standard library sources" if stdlib else "text files"
    source = f"{origin} under {root} (bytes; split by {corpus.split})"
    return RawData(arrays["train"][0], arrays["train"][1], arrays["test"][0], arrays["test"][1], 256, source,
                   scale=1.0, tokens=tokens, val_x=arrays["val"][0], val_y=arrays["val"][1],
                   manifest={name: [list(entry) for entry in corpus.manifest[name]] for name in SPLITS})
