"""N:M semi-structured sparsity: at most N weights kept in every M consecutive input weights.

A weight matrix ``(d_out, d_in)`` (a conv kernel flattened to ``(C_out, C_in/groups · prod(kernel))``,
a HuggingFace ``Conv1D`` weight transposed) is cut along each row into groups of ``M``
consecutive columns; an N:M mask keeps exactly ``N`` weights of every group. ``2:4`` is the
pattern NVIDIA's sparse tensor cores accelerate (``torch.sparse.to_sparse_semi_structured``).

prunelab's choices where the pattern meets other constraints (tested in tests/test_patterns.py):

* **A short last group.** When ``d_in`` is not a multiple of ``M`` the last group of each row has
  ``r < M`` columns and keeps ``min(N, r)`` of them (at most N of every M holds everywhere; such a
  layer cannot be exported to 2:4 kernels, which need ``d_in % M == 0``).
* **Already-pruned weights** stay pruned: a group with fewer than ``N`` survivors keeps them all,
  so pruning again with a pattern never revives a weight.
* **Ties** within a group go to the lower column index.
"""

from __future__ import annotations

import torch

from prunelab.errors import ConfigError

#: largest group size accepted (a pattern is meant for small hardware groups).
MAX_GROUP = 256


def parse_pattern(value) -> tuple[int, int] | None:
    """An N:M pattern from ``None``, ``"2:4"``, ``(2, 4)`` or ``[2, 4]``.

    Args:
        value: the pattern as a user writes it.

    Returns:
        ``(n, m)`` with ``1 <= n < m <= 256``, or None for no pattern.

    Raises:
        ConfigError: anything else.

    Example:
        >>> parse_pattern("2:4")
        (2, 4)
    """
    if value is None:
        return None
    pair = None
    if isinstance(value, str):
        parts = value.strip().split(":")
        if len(parts) == 2 and all(p.strip().isdigit() for p in parts):
            pair = (int(parts[0]), int(parts[1]))
    elif isinstance(value, (tuple, list)) and len(value) == 2 and all(
            isinstance(v, int) and not isinstance(v, bool) for v in value):
        pair = (int(value[0]), int(value[1]))
    if pair is None or not 1 <= pair[0] < pair[1] <= MAX_GROUP:
        raise ConfigError(f"pattern must be 'N:M' with 1 <= N < M <= {MAX_GROUP} (e.g. '2:4'), "
                          f"got {value!r}")
    return pair


def pattern_name(pattern: tuple[int, int] | None) -> str | None:
    """``(2, 4)`` → ``"2:4"`` (None stays None); hashable and JSON-able."""
    return None if pattern is None else f"{pattern[0]}:{pattern[1]}"


def pattern_sparsity(pattern: tuple[int, int]) -> float:
    """The sparsity an N:M pattern gives on full groups: ``1 - N / M``."""
    return 1.0 - pattern[0] / pattern[1]


def _grouped(matrix: torch.Tensor, m: int, fill) -> torch.Tensor:
    """``(rows, cols)`` → ``(rows, groups, m)``, the last group padded with ``fill``."""
    rows, cols = matrix.shape
    pad = (-cols) % m
    if pad:
        matrix = torch.cat((matrix, torch.full((rows, pad), fill, dtype=matrix.dtype,
                                               device=matrix.device)), 1)
    return matrix.reshape(rows, -1, m)


def nm_mask(score: torch.Tensor, pattern: tuple[int, int],
            allowed: torch.Tensor | None = None) -> torch.Tensor:
    """Keep the ``N`` highest-scoring allowed entries of every ``M`` consecutive columns.

    Args:
        score: ``(d_out, d_in)`` scores (higher = more worth keeping; e.g. ``|w|``).
        pattern: ``(n, m)``.
        allowed: ``(d_out, d_in)`` bool, entries that may be kept (current survivors); None = all.

    Returns:
        ``(d_out, d_in)`` bool on ``score``'s device: in every group exactly ``min(N, allowed
        entries of the group)`` True entries (module docstring for short groups and ties).

    Example:
        >>> nm_mask(torch.tensor([[4., 1., 3., 2.]]), (2, 4))
        tensor([[ True, False,  True, False]])
    """
    if score.dim() != 2:
        raise ConfigError(f"an N:M mask needs a 2-D weight matrix, got shape {tuple(score.shape)}")
    n, m = pattern
    rows, cols = score.shape
    ok = torch.ones_like(score, dtype=torch.bool) if allowed is None else allowed.to(score.device, torch.bool)
    ranked = torch.where(ok, score.to(torch.float64), torch.tensor(-torch.inf, dtype=torch.float64,
                                                                   device=score.device))
    groups = _grouped(ranked, m, -torch.inf)
    valid = _grouped(ok, m, False)
    # A stable descending sort ranks ties by column: the lower index is kept.
    order = torch.sort(groups, dim=2, descending=True, stable=True).indices[..., :n]
    keep = torch.zeros_like(valid)
    keep.scatter_(2, order, True)
    keep &= valid
    return keep.reshape(rows, -1)[:, :cols]


def nm_keep_count(allowed: torch.Tensor, pattern: tuple[int, int]) -> int:
    """Weights an N:M mask inside ``allowed`` keeps: ``Σ_groups min(N, allowed in group)``."""
    valid = _grouped(allowed.to(torch.bool), pattern[1], False)
    return int(valid.sum(2).clamp_max(pattern[0]).sum())


def nm_group_counts(mask: torch.Tensor, pattern: tuple[int, int]) -> torch.Tensor:
    """Kept entries per group of a ``(d_out, d_in)`` mask, ``(d_out, ceil(d_in / M))``."""
    return _grouped(mask.to(torch.bool), pattern[1], False).sum(2)


def is_nm(mask: torch.Tensor, pattern: tuple[int, int], exact: bool = True) -> bool:
    """Whether a ``(d_out, d_in)`` mask follows the pattern.

    Args:
        mask: bool matrix.
        pattern: ``(n, m)``.
        exact: every full group keeps exactly N (else at most N); a short last group of ``r``
            columns keeps at most ``min(N, r)``.

    Returns:
        True when it does.
    """
    n, m = pattern
    counts = nm_group_counts(mask, pattern)
    if bool((counts > n).any()):
        return False
    full = mask.shape[1] // m
    return not exact or bool((counts[:, :full] == n).all())


def matrix_view(tensor: torch.Tensor, input_first: bool = False) -> torch.Tensor:
    """A weight (or mask) as its ``(d_out, d_in)`` matrix: ``(shape[0], -1)``, or the transpose
    of a 2-D tensor stored ``(d_in, d_out)`` (HuggingFace ``Conv1D``) when ``input_first``."""
    if input_first:
        return tensor.T
    return tensor.reshape(tensor.shape[0], -1)


def from_matrix_view(matrix: torch.Tensor, shape: torch.Size, input_first: bool = False) -> torch.Tensor:
    """Inverse of :func:`matrix_view`: a ``(d_out, d_in)`` matrix back in the tensor's layout."""
    if input_first:
        return matrix.T.contiguous()
    return matrix.reshape(shape)


def check_pattern_sparsity(pattern: tuple[int, int] | None, sparsity: float) -> None:
    """Refuse a sparsity that contradicts the pattern (the pattern decides how many go).

    Args:
        pattern: ``(n, m)`` or None (then anything goes).
        sparsity: the requested fraction pruned.

    Raises:
        ConfigError: ``sparsity`` is not ``1 - n/m`` (within 1e-9).
    """
    if pattern is not None and abs(sparsity - pattern_sparsity(pattern)) > 1e-9:
        raise ConfigError(f"pattern {pattern_name(pattern)} prunes {pattern_sparsity(pattern):.4g} of "
                          f"each layer's weights; pass sparsity={pattern_sparsity(pattern):.4g}, "
                          f"got {sparsity}")
