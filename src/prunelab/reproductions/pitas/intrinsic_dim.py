"""Intrinsic dimension of a data set: the Levina–Bickel maximum-likelihood estimator.

Levina & Bickel, "Maximum Likelihood Estimation of Intrinsic Dimension" (NIPS 2004), eq. (8):
for a point x with distances T_1(x) ≤ … ≤ T_k(x) to its k nearest neighbours,

    m̂_k(x) = [ 1/(k−1) · Σ_{j=1}^{k−1} log(T_k(x) / T_j(x)) ]^{-1}.

How the per-point values are combined is a choice; prunelab makes it as follows and tests it
(uniform cubes of dimension 2, 5 and 10 embedded by a random rotation in a larger space):

* Over points, the *inverse* estimates are averaged and the mean inverted (MacKay & Ghahramani's
  2005 comment on the paper). Locally the data look like a Poisson process, under which
  Σ_j log(T_k/T_j) is a Gamma(k−1, 1/m) variable, so the mean of the inverses is unbiased for
  1/m, whereas the mean of m̂_k(x) is biased upwards by a factor (k−1)/(k−2).
* Over k, the estimates for k = k1 … k2 are averaged, as Levina & Bickel do; the default
  k1 = 10, k2 = 20 is their recommendation. Small k are noisy; large k reach past the region in
  which the density is roughly constant (and, on a bounded set, past its edges).
* Neighbours of a subsample of query points are searched in a (larger) reference subsample, so
  the cost is n_query × n_reference distances rather than n². Distances are computed in float64.
  A query whose nearest neighbour is at distance 0 (a duplicate) is skipped: log(T_k/0) is
  infinite and says nothing about the dimension.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from prunelab.errors import ConfigError

__all__ = ["levina_bickel", "knn_distances", "PCA", "fit_pca"]


def knn_distances(queries: torch.Tensor, reference: torch.Tensor, k: int, exclude_self: bool,
                  chunk: int = 512) -> torch.Tensor:
    """Sorted distances from each query to its ``k`` nearest reference points.

    Args:
        queries: ``(q, d)`` points.
        reference: ``(n, d)`` points.
        k: neighbours per query.
        exclude_self: the queries are the first ``q`` rows of ``reference``; a query's own row is
            not its neighbour.
        chunk: queries per block (bounds memory to ``chunk × n`` distances).

    Returns:
        ``(q, k)`` float64 distances, ascending along each row.
    """
    queries = queries.reshape(len(queries), -1).double()
    reference = reference.reshape(len(reference), -1).double()
    ref_sq = (reference * reference).sum(1)
    out = []
    for start in range(0, len(queries), chunk):
        block = queries[start : start + chunk]
        # ‖a−b‖² = ‖a‖² + ‖b‖² − 2ab: one matrix product instead of a (chunk, n, d) difference.
        sq = (block * block).sum(1, keepdim=True) + ref_sq[None, :] - 2.0 * block @ reference.T
        sq.clamp_(min=0.0)
        if exclude_self:
            rows = torch.arange(len(block))
            sq[rows, rows + start] = math.inf
        out.append(sq.topk(k, dim=1, largest=False).values.sqrt())
    return torch.cat(out) if out else torch.empty(0, k, dtype=torch.float64)


def levina_bickel(x: torch.Tensor, k1: int = 10, k2: int = 20, n_query: int = 1000,
                  n_reference: int = 10000, seed: int = 0) -> dict:
    """Estimate the intrinsic dimension of the points ``x`` (Levina–Bickel MLE, eq. 8).

    Args:
        x: ``(n, ...)`` samples; each is flattened to a vector.
        k1: smallest neighbourhood size (≥ 2).
        k2: largest neighbourhood size (≥ k1); the estimates for k1 … k2 are averaged.
        n_query: points whose neighbourhoods are used (a random subsample, without replacement).
        n_reference: points searched for neighbours (a random subsample that contains the queries).
        seed: seeds the subsampling.

    Returns:
        ``{"dimension", "per_k" (k -> estimate), "k1", "k2", "n_query", "n_reference",
        "skipped_duplicates"}``.

    Raises:
        ConfigError: bad ``k1``/``k2`` or too few samples.

    Example:
        >>> levina_bickel(data.train.x, k1=10, k2=20)["dimension"]
    """
    if not (isinstance(k1, int) and isinstance(k2, int) and 2 <= k1 <= k2):
        raise ConfigError(f"need integers 2 <= k1 <= k2, got k1={k1!r}, k2={k2!r}")
    n = len(x)
    n_reference = min(int(n_reference), n)
    n_query = min(int(n_query), n_reference)
    if n_reference <= k2:
        raise ConfigError(f"{n} samples are too few for k2={k2} neighbours; use more samples or a smaller k2")
    if n_query < 1:
        raise ConfigError(f"n_query must be at least 1, got {n_query}")
    g = torch.Generator().manual_seed(int(seed))
    idx = torch.randperm(n, generator=g)[:n_reference]
    reference = x[idx].reshape(n_reference, -1)
    dist = knn_distances(reference[:n_query], reference, k2, exclude_self=True)
    valid = dist[:, 0] > 0
    dist = dist[valid]
    if len(dist) == 0:
        raise ConfigError("every sampled point has a duplicate at distance 0; the estimate is undefined")
    logs = dist.log()
    per_k = {}
    for k in range(k1, k2 + 1):
        # inverse estimate per point: mean of log(T_k / T_j) over j < k
        inverse = (logs[:, k - 1 : k] - logs[:, : k - 1]).mean(1)
        per_k[k] = float(1.0 / inverse.mean())
    return {
        "dimension": sum(per_k.values()) / len(per_k),
        "per_k": per_k,
        "k1": k1,
        "k2": k2,
        "n_query": int(valid.sum()),
        "n_reference": n_reference,
        "skipped_duplicates": int((~valid).sum()),
    }


# --------------------------------------------------------------------------- PCA restriction


@dataclass(frozen=True)
class PCA:
    """Principal components of a set of samples (fitted by :func:`fit_pca`).

    Attributes:
        mean: ``(d,)`` float64 mean of the flattened samples.
        components: ``(d, d)`` float64; row ``i`` is the ``i``-th principal direction (unit norm),
            by decreasing variance.
        variance: ``(d,)`` float64 variance along each direction (the covariance eigenvalues).
        n_samples: samples the fit saw.
    """

    mean: torch.Tensor
    components: torch.Tensor
    variance: torch.Tensor
    n_samples: int

    @property
    def dim(self) -> int:
        """Dimension ``d`` of the flattened samples."""
        return int(self.mean.numel())

    def explained(self, k: int) -> float:
        """Fraction of the total variance kept by the first ``k`` components."""
        k = self._check_k(k)
        total = float(self.variance.clamp_min(0).sum())
        return float(self.variance[:k].clamp_min(0).sum()) / total if total > 0 else 1.0

    def restrict(self, x: torch.Tensor, k: int, chunk: int = 8192) -> torch.Tensor:
        """Project ``x`` onto the first ``k`` principal directions and map back (inverse transform).

        Args:
            x: ``(n, ...)`` samples with ``d`` values each.
            k: components kept, ``1 ≤ k ≤ d``; ``k = d`` returns a copy of ``x``.
            chunk: rows per block (bounds the float64 temporaries).

        Returns:
            A tensor of ``x``'s shape and dtype whose centred rows span (at most) ``k`` dimensions.
        """
        k = self._check_k(k)
        flat = x.reshape(len(x), -1)
        if flat.shape[1] != self.dim:
            raise ConfigError(f"the PCA was fitted on {self.dim}-dimensional samples, got {flat.shape[1]}")
        if k == self.dim:
            return x.clone()  # all components: the identity, without two d×d products of rounding
        basis = self.components[:k]
        out = torch.empty_like(flat)
        for start in range(0, len(flat), chunk):
            block = flat[start : start + chunk].double() - self.mean
            out[start : start + chunk] = ((block @ basis.T) @ basis + self.mean).to(x.dtype)
        return out.reshape(x.shape)

    def _check_k(self, k) -> int:
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= self.dim:
            raise ConfigError(f"the number of PCA components must be an integer in [1, {self.dim}], got {k!r}")
        return k


def fit_pca(x: torch.Tensor, chunk: int = 8192) -> PCA:
    """Fit PCA to samples ``x`` (eigen-decomposition of their covariance, in float64).

    Args:
        x: ``(n, ...)`` samples, flattened to ``d`` values each; ``n ≥ 2``.
        chunk: rows per block when accumulating the covariance.

    Returns:
        A :class:`PCA`.

    Example:
        >>> pca = fit_pca(data.train.x)          # the training split only
        >>> x50 = pca.restrict(data.test.x, 50)  # test images seen through 50 components
    """
    n = len(x)
    if n < 2:
        raise ConfigError(f"PCA needs at least 2 samples, got {n}")
    flat = x.reshape(n, -1)
    mean = flat.double().mean(0)
    d = flat.shape[1]
    cov = torch.zeros(d, d, dtype=torch.float64)
    for start in range(0, n, chunk):
        block = flat[start : start + chunk].double() - mean
        cov += block.T @ block
    cov /= n - 1
    variance, vectors = torch.linalg.eigh(cov)
    order = torch.argsort(variance, descending=True)
    return PCA(mean=mean, components=vectors[:, order].T.contiguous(), variance=variance[order], n_samples=n)
