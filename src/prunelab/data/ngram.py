"""A byte n-gram language model: the baseline a byte-level language model has to beat.

Smoothing: interpolated Kneser-Ney (Kneser & Ney, "Improved backing-off for M-gram language
modeling", ICASSP 1995), in the interpolated form of Chen & Goodman ("An empirical study of
smoothing techniques for language modeling", TR-10-98, 1998, eq. 17), with one absolute discount
per order. It was picked over Witten-Bell because it is the stronger of the two in Chen &
Goodman's comparison, so a model that beats it beats a fair baseline. For context ``h`` of
length ``k`` (``h'`` is ``h`` without its oldest byte):

    P_k(w | h) = (max(c_k(h w) - D_k, 0) + D_k * N1+(h .) * P_{k-1}(w | h')) / c_k(h .)

and ``P_k(w | h) = P_{k-1}(w | h')`` when ``c_k(h .) = 0`` (an unseen context). ``c_k`` are the
counts at the highest order and the continuation counts ``N1+(. h w)`` (the number of distinct
bytes seen before ``h w``) below it; ``N1+(h .)`` is the number of distinct bytes seen after
``h``; ``P_{-1}`` is uniform, 1/256, so every byte has a non-zero probability. The discount is
``D_k = n1 / (n1 + 2 n2)`` (Ney, Essen & Kneser 1994), from the numbers ``n1``, ``n2`` of
``k+1``-grams with count 1 and 2 at that level; when there is no singleton (``n1 = 0``) the
estimate would be 0, leaving no mass for unseen bytes, and 0.5 is used instead.

Scoring. :func:`bits_per_byte` predicts every byte of a stream but the first from the up to
``order`` bytes before it in the same stream (the first bytes of a stream use the shorter
contexts they have). :func:`ngram_baseline` scores exactly the bytes a language model is scored
on for a ``text`` split, every ``y`` token, and may look back across window boundaries (a window
of the language model sees only its own window).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from prunelab.errors import ConfigError, DataError

SMOOTHING = "interpolated-kneser-ney"
_FALLBACK_DISCOUNT = 0.5


@dataclass(frozen=True)
class NgramLevel:
    """The counts of one context length ``k``.

    Attributes:
        keys: sorted int64 ids of the seen ``(context, byte)`` pairs, ``context * 256 + byte``,
            where a context of bytes ``c1..ck`` (oldest first) is ``((c1 * 256) + c2) * 256 ...``.
        counts: counts of ``keys`` (continuation counts below the highest order).
        contexts: sorted ids of the seen contexts.
        totals: the sum of ``counts`` over each context.
        types: the number of distinct bytes seen after each context.
        discount: the absolute discount ``D_k``.
    """

    keys: np.ndarray
    counts: np.ndarray
    contexts: np.ndarray
    totals: np.ndarray
    types: np.ndarray
    discount: float


@dataclass(frozen=True)
class NgramModel:
    """A fitted byte n-gram model (see the module docstring).

    Attributes:
        order: the number of preceding bytes the highest order uses.
        levels: one :class:`NgramLevel` per context length, 0 to ``order``.
        smoothing: the smoothing method's name.
        trained_bytes: the number of bytes it was fitted on.
    """

    order: int
    levels: tuple
    smoothing: str
    trained_bytes: int


def _segments(data) -> list[np.ndarray]:
    """``data`` (bytes, a uint8/integer array, or an iterable of those) as a list of int64 arrays."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        return [np.frombuffer(bytes(data), dtype=np.uint8).astype(np.int64)]
    if isinstance(data, np.ndarray) and data.ndim == 1:
        items = [data]
    elif isinstance(data, np.ndarray) and data.ndim == 2:
        items = list(data)
    elif isinstance(data, Iterable):
        items = list(data)
    else:
        raise ConfigError(f"n-gram data must be bytes, a 1-d/2-d byte array or a list of them, got {type(data).__name__}")
    out = []
    for item in items:
        arr = np.frombuffer(bytes(item), dtype=np.uint8) if isinstance(item, (bytes, bytearray)) else np.asarray(item)
        if arr.ndim != 1 or (arr.size and (arr.min() < 0 or arr.max() > 255)):
            raise ConfigError("n-gram data must be 1-d sequences of byte values 0..255")
        out.append(arr.astype(np.int64))
    return out


def _keys(segment: np.ndarray, k: int, start: int) -> np.ndarray:
    """The ids ``context * 256 + byte`` of the length-``k`` contexts of positions ``start..``."""
    key = np.zeros(max(len(segment) - start, 0), dtype=np.int64)
    for back in range(k, -1, -1):
        key = key * 256 + segment[start - back: len(segment) - back]
    return key


def _find(sorted_keys: np.ndarray, values: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """``values`` at the positions of ``queries`` in ``sorted_keys``, 0 where a query is absent."""
    if not len(sorted_keys):
        return np.zeros(len(queries), dtype=values.dtype)
    index = np.minimum(np.searchsorted(sorted_keys, queries), len(sorted_keys) - 1)
    return np.where(sorted_keys[index] == queries, values[index], 0)


def _level(keys: np.ndarray, counts: np.ndarray) -> NgramLevel:
    n1, n2 = int(np.sum(counts == 1)), int(np.sum(counts == 2))
    discount = n1 / (n1 + 2 * n2) if n1 > 0 else _FALLBACK_DISCOUNT
    contexts, first, types = np.unique(keys // 256, return_index=True, return_counts=True)
    totals = np.add.reduceat(counts, first) if len(keys) else np.zeros(0, dtype=np.int64)
    return NgramLevel(keys, counts, contexts, totals, types, discount)


def fit_ngram(data, order: int = 2) -> NgramModel:
    """Fit an interpolated Kneser-Ney byte n-gram model.

    Args:
        data: the training bytes: ``bytes``, a 1-d array of byte values, or several such streams
            (a list, or a 2-d array of rows); n-grams never span two streams.
        order: how many preceding bytes predict a byte (0: unigram, 2: trigram), 0 to 4.

    Returns:
        An :class:`NgramModel`.

    Raises:
        ConfigError: a bad order or data.
        DataError: no stream is longer than ``order`` bytes.

    Example:
        >>> model = fit_ngram(b"abracadabra", order=2)
        >>> round(bits_per_byte(model, b"abracadabra"), 3) < 8
        True
    """
    if isinstance(order, bool) or not isinstance(order, (int, np.integer)) or not 0 <= order <= 4:
        raise ConfigError(f"n-gram order must be an integer from 0 to 4, got {order!r}")
    segments = _segments(data)
    top = [_keys(s, order, order) for s in segments if len(s) > order]
    if not top:
        raise DataError(f"an order-{order} n-gram needs a stream of at least {order + 1} bytes to fit on")
    keys, counts = np.unique(np.concatenate(top), return_counts=True)
    levels = [_level(keys, counts.astype(np.int64))]
    for k in range(order - 1, -1, -1):
        # N1+(. h w): every distinct longer n-gram counts once for its suffix.
        keys, counts = np.unique(keys % 256 ** (k + 1), return_counts=True)
        levels.append(_level(keys, counts.astype(np.int64)))
    return NgramModel(int(order), tuple(reversed(levels)), SMOOTHING, int(sum(len(s) for s in segments)))


def _probabilities(model: NgramModel, segment: np.ndarray) -> np.ndarray:
    """P(byte i | up to ``order`` bytes before it) for every position ``i >= 1`` of ``segment``."""
    n = len(segment) - 1
    prob = np.full(n, 1.0 / 256.0)
    for k, level in enumerate(model.levels):
        start = max(k, 1)   # position 0 is never predicted; position i has i bytes before it
        if start >= len(segment):
            break
        keys = _keys(segment, k, start)
        lower = prob[start - 1:]
        count = _find(level.keys, level.counts, keys).astype(np.float64)
        context = keys // 256
        total = _find(level.contexts, level.totals, context).astype(np.float64)
        types = _find(level.contexts, level.types, context).astype(np.float64)
        seen = total > 0
        mixed = (np.maximum(count - level.discount, 0.0) + level.discount * types * lower) / np.where(seen, total, 1.0)
        prob[start - 1:] = np.where(seen, mixed, lower)
    return prob


def bits_per_byte(model: NgramModel, data) -> float:
    """The mean number of bits ``model`` needs per byte of ``data``.

    Every byte of each stream but the first is predicted from the up to ``model.order`` bytes
    before it in the same stream.

    Args:
        model: a fitted :class:`NgramModel`.
        data: bytes, a 1-d byte array, or several streams (as for :func:`fit_ngram`).

    Returns:
        ``-mean(log2 P(byte | context))`` over the predicted bytes.

    Raises:
        DataError: nothing to predict (every stream shorter than 2 bytes).

    Example:
        >>> bits_per_byte(fit_ngram(b"aaaa", order=0), b"aa") < 1.0
        True
    """
    logs = [np.log2(_probabilities(model, s)) for s in _segments(data) if len(s) > 1]
    if not logs:
        raise DataError("bits_per_byte needs a stream of at least 2 bytes (the first byte is not predicted)")
    return float(-np.concatenate(logs).mean())


def next_byte_distribution(model: NgramModel, context: bytes) -> np.ndarray:
    """P(w | context) for all 256 bytes ``w`` (the last ``model.order`` bytes of ``context`` count).

    Args:
        model: a fitted :class:`NgramModel`.
        context: the preceding bytes (may be empty).

    Returns:
        A float64 array of 256 probabilities; it sums to 1.

    Example:
        >>> round(float(next_byte_distribution(fit_ngram(b"abab", order=1), b"a").sum()), 12)
        1.0
    """
    context = bytes(context)
    tail = context[max(len(context) - model.order, 0):]
    if not tail:
        return np.array([_unigram(model, w) for w in range(256)])
    rows = (np.frombuffer(tail + bytes([w]), dtype=np.uint8).astype(np.int64) for w in range(256))
    return np.array([_probabilities(model, row)[-1] for row in rows])


def _unigram(model: NgramModel, byte: int) -> float:
    """P_0(byte): the context-free distribution (the lowest level)."""
    level = model.levels[0]
    count = float(_find(level.keys, level.counts, np.array([byte]))[0])
    total = float(level.totals[0]) if len(level.totals) else 0.0
    if total == 0:
        return 1.0 / 256.0
    return (max(count - level.discount, 0.0) + level.discount * float(level.types[0]) / 256.0) / total


def split_streams(split) -> list[np.ndarray]:
    """The byte streams a ``text`` split's windows were cut from, as uint8 arrays.

    Windows ``x[i]`` and ``y[i]`` cover ``T + 1`` consecutive bytes; consecutive windows whose
    bytes continue each other (``x[i+1][0] == y[i][-1]``, as in a split that ``limit`` did not
    thin) join into one stream, so the streams' bytes after their first are exactly the ``y``
    tokens.

    Args:
        split: a :class:`prunelab.data.Split` of ``text`` windows.

    Returns:
        A list of streams.

    Raises:
        DataError: the split is not next-byte windows (``y`` is not ``x`` shifted by one).
    """
    x = np.asarray(split.x.cpu().numpy(), dtype=np.int64)
    y = np.asarray(split.y.cpu().numpy(), dtype=np.int64)
    if x.ndim != 2 or x.shape != y.shape or not np.array_equal(x[:, 1:], y[:, :-1]):
        raise DataError("the split is not next-byte windows of a text stream (y must be x shifted by one); "
                        "load it with prunelab.data.load('text', ...)")
    if not len(x):
        return []
    rows = np.concatenate([x, y[:, -1:]], axis=1).astype(np.uint8)
    breaks = np.flatnonzero(x[1:, 0] != y[:-1, -1]) + 1
    streams = []
    for first, last in zip(np.r_[0, breaks], np.r_[breaks, len(rows)]):
        part = rows[first:last]
        streams.append(np.concatenate([part[0], part[1:, 1:].reshape(-1)]))
    return streams


def ngram_baseline(dataset, order: int = 2) -> dict:
    """Fit an n-gram on a ``text`` data set's training windows and score its val and test bytes.

    Args:
        dataset: a :class:`prunelab.data.Dataset` of ``load("text", ...)``.
        order: the n-gram order (preceding bytes used).

    Returns:
        ``{"order", "smoothing", "val_bpb", "test_bpb", "train_bytes"}``; ``val_bpb`` is None when
        the validation split is empty. Scored bytes are exactly the splits' ``y`` tokens.

    Example:
        >>> from prunelab import data
        >>> ngram_baseline(data.load("text", max_bytes=20_000, eval_bytes=5_000))["order"]
        2
    """
    model = fit_ngram(split_streams(dataset.train), order)
    scores = {}
    for name in ("val", "test"):
        streams = split_streams(getattr(dataset, name))
        scores[name] = bits_per_byte(model, streams) if streams else None
    return {"order": model.order, "smoothing": model.smoothing, "val_bpb": scores["val"],
            "test_bpb": scores["test"], "train_bytes": model.trained_bytes}


__all__ = ["NgramModel", "NgramLevel", "fit_ngram", "bits_per_byte", "next_byte_distribution", "split_streams", "ngram_baseline",
           "SMOOTHING"]
