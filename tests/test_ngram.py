"""Tests of the byte n-gram baseline (prunelab.data.ngram): interpolated Kneser-Ney by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from prunelab import data as pdata
from prunelab.data import Split
from prunelab.data.ngram import (
    bits_per_byte, fit_ngram, next_byte_distribution, ngram_baseline, split_streams,
)
from prunelab.errors import ConfigError, DataError


def test_order0_unigram_by_hand():
    # counts a:2 b:1 -> n1 = 1, n2 = 1, D = 1/3; N = 3 events, 2 distinct bytes.
    model = fit_ngram(b"aab", order=0)
    assert model.levels[0].discount == pytest.approx(1 / 3, abs=1e-15)
    d = 1 / 3
    p_a = (2 - d + d * 2 / 256) / 3
    p_b = (1 - d + d * 2 / 256) / 3
    p_c = (d * 2 / 256) / 3
    dist = next_byte_distribution(model, b"")
    assert dist[ord("a")] == pytest.approx(p_a, rel=1e-12)
    assert dist[ord("b")] == pytest.approx(p_b, rel=1e-12)
    assert dist[ord("c")] == pytest.approx(p_c, rel=1e-12)
    assert dist.sum() == pytest.approx(1.0, abs=1e-12)
    # Only the second byte of a stream is predicted.
    assert bits_per_byte(model, b"ab") == pytest.approx(-math.log2(p_b), rel=1e-12)
    assert bits_per_byte(model, b"zab") == pytest.approx(-(math.log2(p_a) + math.log2(p_b)) / 2, rel=1e-12)


def test_order1_bigram_by_hand():
    # Bigrams of "aabab": aa:1 ab:2 ba:1 -> D1 = 2 / (2 + 2) = 1/2.
    # Continuation counts N1+(. w): a from {aa, ba} = 2, b from {ab} = 1 -> D0 = 1/3, total 3, 2 types.
    model = fit_ngram(b"aabab", order=1)
    d1, d0 = 0.5, 1 / 3
    assert [lvl.discount for lvl in model.levels] == pytest.approx([d0, d1], abs=1e-15)
    p0_a = (2 - d0 + d0 * 2 / 256) / 3
    p0_b = (1 - d0 + d0 * 2 / 256) / 3
    p0_c = (d0 * 2 / 256) / 3
    p_b_after_a = (2 - d1 + d1 * 2 * p0_b) / 3      # context a: total 3, 2 types
    p_a_after_b = (1 - d1 + d1 * 1 * p0_a) / 1      # context b: total 1, 1 type
    p_c_after_a = (d1 * 2 * p0_c) / 3
    assert bits_per_byte(model, b"ab") == pytest.approx(-math.log2(p_b_after_a), rel=1e-12)
    assert bits_per_byte(model, b"ba") == pytest.approx(-math.log2(p_a_after_b), rel=1e-12)
    assert bits_per_byte(model, b"ac") == pytest.approx(-math.log2(p_c_after_a), rel=1e-12)
    assert bits_per_byte(model, b"ca") == pytest.approx(-math.log2(p0_a), rel=1e-12)  # unseen context
    assert next_byte_distribution(model, b"a").sum() == pytest.approx(1.0, abs=1e-12)


def test_order2_by_hand_with_short_context_at_the_start():
    # Trigrams of "aaaa": aaa:2 -> no singleton, D2 = 0.5 (the fallback). The levels below see one
    # type each (aa, then a), all singletons: D1 = D0 = 1, so P0 = P1 = 1/256.
    model = fit_ngram(b"aaaa", order=2)
    assert [lvl.discount for lvl in model.levels] == [1.0, 1.0, 0.5]
    p2 = (2 - 0.5 + 0.5 * 1 * (1 / 256)) / 2
    # "aaa": byte 1 has one byte before it (P1 = 1/256, 8 bits), byte 2 has two (P2).
    assert bits_per_byte(model, b"aaa") == pytest.approx((8 - math.log2(p2)) / 2, rel=1e-12)


def test_distributions_sum_to_one_on_real_text():
    text = open(__file__, "rb").read()
    model = fit_ngram(text, order=2)
    for context in (b"", b"d", b"de", b"\xff\xfe", b"xyzq"):
        assert next_byte_distribution(model, context).sum() == pytest.approx(1.0, abs=1e-12)
    # More context never hurts on the training text itself.
    scores = [bits_per_byte(fit_ngram(text, order=k), text) for k in (0, 1, 2)]
    assert scores[0] > scores[1] > scores[2]


def test_streams_never_mix_and_bad_input():
    joined = fit_ngram(b"abab", order=1)
    apart = fit_ngram([b"ab", b"ab"], order=1)   # no "ba" across the two streams
    assert bits_per_byte(joined, b"ba") < bits_per_byte(apart, b"ba")
    assert fit_ngram(np.array([[97, 98], [97, 98]]), order=1).levels[1].keys.tolist() == \
        apart.levels[1].keys.tolist()
    with pytest.raises(ConfigError, match="order"):
        fit_ngram(b"abc", order=5)
    with pytest.raises(DataError, match="at least 3 bytes"):
        fit_ngram(b"ab", order=2)
    with pytest.raises(DataError, match="at least 2 bytes"):
        bits_per_byte(joined, b"a")
    with pytest.raises(ConfigError, match="byte values"):
        fit_ngram([np.array([1, 300])], order=0)


def test_split_streams_rebuild_contiguous_windows_and_breaks():
    stream = np.frombuffer(b"abcdefghijklm", dtype=np.uint8).astype(np.int64)
    x = torch.from_numpy(stream[:12].reshape(3, 4).copy())
    y = torch.from_numpy(stream[1:13].reshape(3, 4).copy())
    assert [bytes(s) for s in split_streams(Split(x, y))] == [b"abcdefghijklm"]
    picked = Split(x[[0, 2]], y[[0, 2]])   # a thinned split: two separate streams
    assert [bytes(s) for s in split_streams(picked)] == [b"abcde", b"ijklm"]
    with pytest.raises(DataError, match="shifted by one"):
        split_streams(Split(x, x))


def test_baseline_scores_exactly_the_y_bytes(tmp_path):
    root = tmp_path / "c"
    root.mkdir()
    rng = np.random.default_rng(0)
    words = [b"alpha", b"beta", b"gamma", b"delta", b"\n"]
    (root / "a.txt").write_bytes(b" ".join(words[i] for i in rng.integers(0, 5, 400)))
    (root / "b.txt").write_bytes(b" ".join(words[i] for i in rng.integers(0, 5, 400)))
    ds = pdata.load("text", data_dir=root, context=16)
    result = ngram_baseline(ds)
    whole = (root / "a.txt").read_bytes() + b"\n" + (root / "b.txt").read_bytes()
    cut_val, cut_test = len(whole) * 90 // 100, len(whole) * 95 // 100
    n_train, n_val = len(ds.train) * 16 + 1, len(ds.val) * 16 + 1
    model = fit_ngram(whole[:n_train], order=2)
    expected_val = bits_per_byte(model, whole[cut_val: cut_val + n_val])
    assert result["val_bpb"] == pytest.approx(expected_val, rel=1e-12)
    assert result["order"] == 2 and result["smoothing"] == "interpolated-kneser-ney"
    assert result["train_bytes"] == n_train
    assert 0 < result["test_bpb"] < 3   # four words: far below the 8 bits of a uniform byte
