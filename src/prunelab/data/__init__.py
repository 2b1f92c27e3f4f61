"""Datasets: a name registry, file search, safe parsing, validation split and normalisation.

``load(name)`` returns a :class:`Dataset` of in-memory float32 tensors, shaped ``(n, C, H, W)``.
The training loop batches these tensors itself. ``registry.list()`` names the data sets.

Where files come from. File-backed datasets are searched in this order, and the first complete
set of files wins (``prunelab.data.files``):

1. an explicit ``data_dir`` (the CLI's ``--data-dir``);
2. every folder in ``$PRUNELAB_DATA`` (``os.pathsep``-separated);
3. the user cache, ``$XDG_CACHE_HOME/prunelab`` or ``~/.cache/prunelab``;
4. system locations. Only Fashion-MNIST has one: ``/usr/share/datasets/fashion-mnist``, from the
   Debian package ``dataset-fashion-mnist``.

Each root is tried as is and in the usual sub-layouts. For example, Fashion-MNIST is looked for in
``ROOT``, ``ROOT/FashionMNIST/raw`` (torchvision) and ``ROOT/fashion-mnist``. prunelab never
downloads and never writes a cache to disk. Parsed raw arrays are kept in a small in-process LRU
cache, keyed by each file's resolved path, mtime and size.

Text. ``text`` is byte-level language-modelling data from local files (``prunelab.data.text``):
by default the Python standard library's ``*.py`` sources, or every text file under ``data_dir``.
Whole files go to train/val/test by the sha256 of their relative path; the splits hold int64
windows ``x`` (n, context) and ``y`` = ``x`` shifted by one byte; ``info["tokens"]`` says what the
tokens are and ``info["manifest"]`` which file bytes were used. Loader options (``--data-option``
on the command line): ``context`` (128), ``max_bytes`` (2,000,000 training bytes) and
``eval_bytes`` (200,000 each for val and test). ``prunelab.data.ngram`` fits the order-2 byte
n-gram baseline (interpolated Kneser-Ney) and reports its bits per byte.

Safety. The CIFAR-10 "python version" batches are pickles. They are read with a restricted
unpickler that can only rebuild numpy arrays and dtypes, so a crafted file cannot run code.

Protocol:

* The validation split is carved from the training set with a permutation seeded by ``seed``.
  The test set is never used for selection.
* ``normalize="standard"`` first scales pixels to [0, 1], then subtracts the per-channel mean and
  divides by the per-channel std used by the PQ Index code (Diao et al., ICLR 2023; see
  :data:`STANDARD_STATS`). ``"unit"`` only scales to [0, 1]: Pitas et al. divide by 255 and
  subtract no mean. ``"none"`` keeps the raw values as float32.
"""

from __future__ import annotations

from prunelab.data.datasets import Dataset, RawData, Split, get, load, register, registry
from prunelab.data.splits import NORMALIZATIONS, STANDARD_STATS
from prunelab.data.files import search_paths
from prunelab.data.idx import read_idx
from prunelab.data import cifar as _cifar  # noqa: F401  (registers cifar10)
from prunelab.data import text as _text  # noqa: F401  (registers text)
from prunelab.data.builtin import DIGITS_TEST_FRACTION, DIGITS_TEST_SEED

__all__ = [
    "Split",
    "Dataset",
    "RawData",
    "registry",
    "register",
    "get",
    "load",
    "search_paths",
    "read_idx",
    "NORMALIZATIONS",
    "STANDARD_STATS",
    "DIGITS_TEST_FRACTION",
    "DIGITS_TEST_SEED",
]
