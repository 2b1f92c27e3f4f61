"""The core: masks, size and FLOP metrics, the PQ Index, checkpoints.

Everything else builds on these; this package imports nothing of prunelab but ``errors`` and ``utils``.
"""
