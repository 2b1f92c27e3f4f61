"""Every pruning family on a byte-level language model (the ``text`` data set and ``gpt``): the
``lm`` and ``lm-quick`` suites and their report."""

from prunelab.reproductions.lm import suite  # noqa: F401  (registers the suites)
