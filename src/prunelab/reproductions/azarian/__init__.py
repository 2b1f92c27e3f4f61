"""Azarian et al. 2020 (arXiv:2003.00075): the LTP suite against GMP and magnitude pruning, and its report."""

from prunelab.reproductions.azarian import suite  # noqa: F401  (registers the suite)
