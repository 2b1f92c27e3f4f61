"""Chao et al., NeurIPS 2020 (arXiv:2006.09358): the gRDA suites, the valley between two networks, and
the measurements behind ``docs/results/grda`` (:mod:`~prunelab.reproductions.chao.experiment`, tabulated by
:mod:`~prunelab.reproductions.chao.summarize`)."""

from prunelab.reproductions.chao import suite  # noqa: F401  (registers the suites)
