"""Pitas, Davies & Vandergheynst 2019 (arXiv:1905.08793) and FeTa (arXiv:1803.04239): suite and studies."""

from prunelab.reproductions.pitas import suite  # noqa: F401  (registers the suite)
