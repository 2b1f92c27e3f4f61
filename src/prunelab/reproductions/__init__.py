"""One folder per paper: its suites, studies, analyses and report writers.

- :mod:`~prunelab.reproductions.pitas`: Pitas, Davies & Vandergheynst 2019 and FeTa (hard thresholding,
  layer-wise pruning, the depth and latent-dimensionality studies);
- :mod:`~prunelab.reproductions.layerwise`: every layer-wise pruner (magnitude, hard thresholding, FeTa,
  Net-Trim, L-OBS, SparseGPT, Wanda) at 50-95 % and 2:4 with prune time and peak memory;
- :mod:`~prunelab.reproductions.diao`: Diao et al., ICLR 2023 (PQ Index, SAP);
- :mod:`~prunelab.reproductions.azarian`: Azarian et al. 2020 (LTP against GMP);
- :mod:`~prunelab.reproductions.chao`: Chao et al., NeurIPS 2020 (gRDA);
- :mod:`~prunelab.reproductions.lm`: every pruning family on a byte-level language model (``text``, ``gpt``);
- :mod:`~prunelab.reproductions.mobile`: LTP against GMP and magnitude on MobileNetV2, EfficientNet-B0 and MixNet-S.

Importing this package registers every paper's suites with :mod:`prunelab.harness.suites`.
"""

from prunelab.reproductions import azarian, chao, diao, layerwise, lm, mobile, pitas  # noqa: F401  (registers the suites)
