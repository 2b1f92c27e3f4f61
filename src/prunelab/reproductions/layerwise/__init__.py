"""Every layer-wise pruner (magnitude, hard thresholding, FeTa, Net-Trim, L-OBS, SparseGPT, Wanda) at
50-95 % and 2:4 on three networks: the ``layerwise`` suite and its report."""

from prunelab.reproductions.layerwise import suite  # noqa: F401  (registers the suite)
