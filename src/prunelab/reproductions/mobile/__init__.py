"""LTP against GMP and magnitude + retraining on MobileNetV2, EfficientNet-B0 and MixNet-S: the
``mobile`` and ``mobile-3seeds`` suites and their report."""

from prunelab.reproductions.mobile import suite  # noqa: F401  (registers the suites)
