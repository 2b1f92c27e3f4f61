"""Chao et al., NeurIPS 2020 (arXiv:2006.09358): the gRDA suites and the valley between two networks."""

from prunelab.reproductions.chao import suite  # noqa: F401  (registers the suites)
