"""Built-in data sets that need no files: scikit-learn's 8x8 digits and Gaussian synthetic classes."""

from __future__ import annotations

import functools

import numpy as np

from prunelab.data.datasets import RawData, no_options, register
from prunelab.errors import ConfigError

#: The digits test holdout is fixed (it does not depend on ``load(seed=...)``): 20% of the 1797
#: images, picked by a permutation seeded with this constant, so every run tests on the same 359.
DIGITS_TEST_FRACTION = 0.2
DIGITS_TEST_SEED = 0


@register("digits", default_val_size=0.1)
def _load_digits(data_dir=None, **kwargs) -> RawData:
    """scikit-learn's bundled 8x8 digits (UCI optdigits test set), values 0..16, 10 classes.

    The dataset has no official test split. prunelab holds out a fixed 20% (359 images), chosen
    by a permutation seeded with ``DIGITS_TEST_SEED``. The remaining 1438 images form the
    training set. ``"unit"`` divides by 16.
    """
    no_options("digits", kwargs)
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = bunch.data.astype(np.float32).reshape(-1, 1, 8, 8)
    y = bunch.target.astype(np.int64)
    order = np.random.default_rng(DIGITS_TEST_SEED).permutation(len(y))
    n_test = int(round(DIGITS_TEST_FRACTION * len(y)))
    test, train = np.sort(order[:n_test]), np.sort(order[n_test:])
    return RawData(x[train], y[train], x[test], y[test], 10, "sklearn.datasets.load_digits", 16.0)


@register("synthetic", default_val_size=0.1)
def _load_synthetic(
    data_dir=None,
    in_shape=(1, 8, 8),
    num_classes: int = 10,
    n_train: int = 1000,
    n_test: int = 500,
    separation: float = 4.0,
    data_seed: int = 0,
    **kwargs,
) -> RawData:
    """Gaussian classes. It is learnable by a linear model and costs nothing to make.

    Each class ``c`` has a mean ``mu_c = separation * g_c / sqrt(d)``, where ``g_c ~ N(0, I_d)``
    and ``d = prod(in_shape)``. A sample is ``mu_c + N(0, I_d)``. Two class means are thus about
    ``separation * sqrt(2)`` noise-stds apart, whatever ``d`` is. With the defaults, a linear
    model reaches about 95% test accuracy.
    Labels are balanced (``i % num_classes``, shuffled).

    Args:
        in_shape: shape of one input, for example ``(1, 8, 8)`` or ``(3, 32, 32)``.
        num_classes: number of classes (>= 2).
        n_train, n_test: sizes of the training and test sets.
        separation: distance scale between class means. Higher is easier.
        data_seed: seeds the generator. The data does not depend on ``load(seed=...)``, which only
            picks the validation split.
    """
    no_options("synthetic", kwargs)
    try:
        shape = tuple(int(d) for d in in_shape)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"synthetic in_shape must be a tuple of ints, got {in_shape!r}") from err
    if not shape or any(d < 1 for d in shape):
        raise ConfigError(f"synthetic in_shape must be non-empty positive sizes, got {in_shape!r}")
    for label, value, low in (("num_classes", num_classes, 2), ("n_train", n_train, 1),
                              ("n_test", n_test, 1)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ConfigError(f"synthetic {label} must be an integer >= {low}, got {value!r}")
    if not separation > 0:
        raise ConfigError(f"synthetic separation must be > 0, got {separation!r}")
    train_x, train_y, test_x, test_y = _make_synthetic(
        shape, int(num_classes), int(n_train), int(n_test), float(separation), int(data_seed)
    )
    source = (f"synthetic(in_shape={shape}, num_classes={num_classes}, n_train={n_train}, "
              f"n_test={n_test}, separation={separation}, data_seed={data_seed})")
    return RawData(train_x, train_y, test_x, test_y, int(num_classes), source, 1.0)


@functools.lru_cache(maxsize=4)
def _make_synthetic(shape, num_classes, n_train, n_test, separation, data_seed):
    rng = np.random.default_rng(data_seed)
    dim = int(np.prod(shape))
    means = rng.standard_normal((num_classes, dim)) * (separation / np.sqrt(dim))

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.permutation(np.arange(n) % num_classes).astype(np.int64)
        x = (means[y] + rng.standard_normal((n, dim))).astype(np.float32).reshape(n, *shape)
        x.flags.writeable = False
        y.flags.writeable = False
        return x, y

    train_x, train_y = draw(n_train)
    test_x, test_y = draw(n_test)
    return train_x, train_y, test_x, test_y


