"""Diao et al., ICLR 2023 (arXiv:2302.05601): the PQ Index and SAP suite and its report."""

from prunelab.reproductions.diao import suite  # noqa: F401  (registers the suite)
