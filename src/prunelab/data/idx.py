"""IDX files (LeCun et al., MNIST) and the two data sets stored in them: MNIST and Fashion-MNIST."""

from __future__ import annotations

import functools
import math
import os
from pathlib import Path

import numpy as np

from prunelab.data.files import FIX, file_key, read_bytes, search_paths
from prunelab.data.datasets import RawData, no_options, register
from prunelab.data.splits import STANDARD_STATS
from prunelab.errors import DataError

_IDX_FILES = {
    "train_x": ("train-images-idx3-ubyte", 0x00000803),
    "train_y": ("train-labels-idx1-ubyte", 0x00000801),
    "test_x": ("t10k-images-idx3-ubyte", 0x00000803),
    "test_y": ("t10k-labels-idx1-ubyte", 0x00000801),
}


def read_idx(path: str | os.PathLike, magic: int | None = None, fix: str = "replace the file") -> np.ndarray:
    """Parse one IDX file (gzipped or not) into a read-only uint8 array.

    Format (LeCun et al., MNIST): a big-endian 4-byte magic ``0x0000TTNN`` (TT = 0x08 for
    unsigned bytes, NN = number of dimensions), then NN big-endian uint32 sizes, then the data.

    Args:
        path: the file. It may be gzip-compressed, whatever its name.
        magic: the expected magic number (0x803 for images, 0x801 for labels), or None for any
            unsigned-byte IDX file.
        fix: what to tell the user to do if the file is damaged.

    Returns:
        A read-only uint8 array shaped like the header says.

    Raises:
        DataError: wrong magic, short header, or a byte count that does not match the header.
    """
    path = Path(path)
    # The header first: the size it declares bounds the read (a damaged header or a gzip bomb
    # cannot make it exhaust memory).
    data = read_bytes(path, fix, max_size=4 + 4 * 255)
    if len(data) < 4:
        raise DataError(f"{path} is truncated ({len(data)} bytes, no IDX header); {fix}")
    found = int.from_bytes(data[:4], "big")
    if data[0:2] != b"\0\0" or data[2] != 0x08 or (magic is not None and found != magic):
        expected = f"0x{magic:08x}" if magic is not None else "0x000008NN"
        raise DataError(
            f"{path} is not the expected IDX file: magic number 0x{found:08x}, expected {expected}; {fix}"
        )
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path} is truncated inside its IDX header; {fix}")
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected_len = header + math.prod(dims)
    data = read_bytes(path, fix, max_size=expected_len + 1)   # one byte more tells a longer file
    if len(data) != expected_len:
        holds = f"{len(data)} bytes" if len(data) < expected_len else "more"
        raise DataError(
            f"{path} is truncated or damaged: its header says {'x'.join(map(str, dims))} "
            f"({expected_len} bytes) but it holds {holds}; {fix}"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def _find_idx_file(folder: Path, base: str) -> Path | None:
    # The Kaggle / original-site variants spell "train-images.idx3-ubyte" with a dot.
    for stem in (base, base.replace("-idx", ".idx")):
        for name in (stem, stem + ".gz"):
            path = folder / name
            if path.is_file():
                return path
    return None


@functools.lru_cache(maxsize=4)
def _parse_idx_set(keys: tuple[tuple[str, int, int], ...], fix: str) -> tuple[np.ndarray, ...]:
    paths = [Path(k[0]) for k in keys]
    arrays = [read_idx(p, _IDX_FILES[slot][1], fix) for p, slot in zip(paths, _IDX_FILES)]
    train_x, train_y, test_x, test_y = arrays
    for images, labels, ipath, lpath in ((train_x, train_y, paths[0], paths[1]),
                                         (test_x, test_y, paths[2], paths[3])):
        if images.shape[0] != labels.shape[0]:
            raise DataError(
                f"{ipath} holds {images.shape[0]} images but {lpath} holds {labels.shape[0]} "
                f"labels; the files do not belong together; {fix}"
            )
        if labels.size and int(labels.max()) >= 10:
            raise DataError(f"{lpath} has label {int(labels.max())}, outside 0..9; {fix}")
    if train_x.shape[1:] != test_x.shape[1:]:
        raise DataError(
            f"{paths[0]} has images of {train_x.shape[1:]} but {paths[2]} has {test_x.shape[1:]}; {fix}"
        )
    return train_x[:, None], train_y, test_x[:, None], test_y


def _load_idx_dataset(key: str, title: str, how_to_get: str, data_dir) -> RawData:
    searched: list[str] = []
    partial: list[str] = []
    for folder in search_paths(key, data_dir):
        searched.append(str(folder))
        if not folder.is_dir():
            continue
        found = {slot: _find_idx_file(folder, base) for slot, (base, _) in _IDX_FILES.items()}
        if all(found.values()):
            keys = tuple(file_key(found[slot]) for slot in _IDX_FILES)
            train_x, train_y, test_x, test_y = _parse_idx_set(keys, FIX[key])
            gz = "gzip" if any(p.suffix == ".gz" for p in found.values()) else "raw"
            return RawData(train_x, train_y, test_x, test_y, 10, f"{folder} (IDX, {gz})", 255.0,
                           *STANDARD_STATS[key])
        have = [p.name for p in found.values() if p is not None]
        if have:
            missing = [base for slot, (base, _) in _IDX_FILES.items() if found[slot] is None]
            partial.append(f"{folder} has {', '.join(have)} but lacks {', '.join(missing)}[.gz]")
    names = ", ".join(f"{base}[.gz]" for base, _ in _IDX_FILES.values())
    note = f" Incomplete: {'; '.join(partial)}." if partial else ""
    raise DataError(
        f"{title} not found: looked for {names} in: {'; '.join(searched)}.{note} {how_to_get} "
        f"prunelab never downloads."
    )


# key: (title, how to get the files, what the data set is)
_IDX_DATASETS = {
    "fashion-mnist": (
        "Fashion-MNIST",
        "To get it: `sudo apt-get install dataset-fashion-mnist` (installs "
        "/usr/share/datasets/fashion-mnist), or put the four files from "
        "https://github.com/zalandoresearch/fashion-mnist in a folder DIR and pass --data-dir DIR "
        "or set PRUNELAB_DATA=DIR.",
        "Fashion-MNIST (Xiao et al. 2017): 60000 train / 10000 test 28x28 grey images, 10 classes.",
    ),
    "mnist": (
        "MNIST",
        "To get it: put the four MNIST IDX files (gzipped or not) in a folder DIR "
        "(or a torchvision download, DIR/MNIST/raw) and pass --data-dir DIR or set PRUNELAB_DATA=DIR.",
        "MNIST (LeCun et al. 1998): 60000 train / 10000 test 28x28 grey digits, 10 classes.",
    ),
}


def _idx_loader(key: str):
    title, how_to_get, doc = _IDX_DATASETS[key]

    def loader(data_dir=None, **kwargs) -> RawData:
        no_options(key, kwargs)
        return _load_idx_dataset(key, title, how_to_get, data_dir)

    loader.__name__ = loader.__qualname__ = f"load_{key.replace('-', '_')}"
    loader.__doc__ = doc
    return loader


for _key in _IDX_DATASETS:
    register(_key)(_idx_loader(_key))
del _key
