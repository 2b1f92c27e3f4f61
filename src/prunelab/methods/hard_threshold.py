"""Hard thresholding as Pitas et al. do it: a per-layer threshold read off a 100-bin histogram.

The official code (``utils.compute_thresholding_sparsification`` in
konstantinos-p/FeTa_Fully_Connected, Pitas, Davies, Vandergheynst 2019) builds, per layer, a 100-bin histogram of
|W| over ``[min|W|, max|W|]``, normalises it to a CDF, takes the *left edge* of the first bin
whose CDF reaches the target sparsity ``p`` as the threshold, and zeroes every weight with
``|w| < threshold``. Every layer gets the same ``p``. The achieved sparsity is therefore only
approximate, and at most ``p``: the weights of the bin where the CDF crosses ``p`` all survive.

prunelab's version differs in two documented details: the CDF is computed from integer bin
counts (``count ≥ p · n``) instead of normalised floats, so an exact bin boundary is not lost to
rounding; and already-pruned weights count as zeros in the histogram (the official script
prunes its weight arrays in place, so repeated calls see zeros too). Bins are ``[e_k, e_{k+1})``,
the last one closed, as ``numpy.histogram``.

``exact=True`` gives per-layer exact magnitude pruning instead (the same fraction in each layer,
exactly ``round(p · n)`` weights), the comparison the paper's approximate variant calls for.

On a transformer nothing changes (one threshold per weight matrix); the layer left dense by
default is the last prunable one, which in a language model with a tied head is the last
block's ``mlp.proj``, not a classifier.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from prunelab.errors import ConfigError
from prunelab.methods.layerwise.driver import as_layer_names, default_layers, keep_count, top_k_mask
from prunelab.core.masks import Masks, resolve_parameters
from prunelab.core.prunable import unwrap
from prunelab.methods import register
from prunelab.methods.base import OneShotMethod, check_sparsity


def histogram_threshold(magnitudes: torch.Tensor, sparsity: float, bins: int = 100) -> float:
    """The official histogram threshold for one layer.

    Args:
        magnitudes: |w| of the layer (any shape; pruned entries as 0).
        sparsity: target fraction p in [0, 1).
        bins: number of equal-width bins over ``[min, max]``.

    Returns:
        The left edge of the first bin whose cumulative count reaches ``p · n``; weights with
        ``|w| <`` it are pruned.
    """
    values = magnitudes.detach().reshape(-1).to(torch.float64)
    device = values.device   # a CUDA model's histogram is counted on the GPU
    lo, hi = float(values.min()), float(values.max())
    if lo == hi:  # numpy.histogram widens a degenerate range to [v - 0.5, v + 0.5]
        lo, hi = lo - 0.5, hi + 0.5
    edges = torch.linspace(lo, hi, bins + 1, dtype=torch.float64, device=device)
    index = torch.bucketize(values, edges[1:-1], right=True)
    cumulative = torch.bincount(index, minlength=bins).cumsum(0)
    first = int(torch.searchsorted(cumulative.to(torch.float64),
                                   torch.tensor([sparsity * values.numel()], dtype=torch.float64, device=device)))
    return float(edges[min(first, bins - 1)])


@dataclass(frozen=True)
class HardThresholdHparams:
    """Hyperparameters of the paper's hard thresholding.

    Attributes:
        bins: histogram bins (100 in the official code).
        exact: prune exactly ``round(p · n)`` weights per layer instead of the histogram rule.
        layers: weight names to prune; None = every prunable layer but the last (as the paper's
            FC experiments, which threshold only the hidden layers).
        include_last: with ``layers=None``, prune the last layer too.
    """

    bins: int = 100
    exact: bool = False
    layers: tuple[str, ...] | None = None
    include_last: bool = False

    def __post_init__(self):
        object.__setattr__(self, "layers", as_layer_names(self.layers))
        if self.bins < 1:
            raise ConfigError(f"hard-threshold bins must be >= 1, got {self.bins}")


@register("hard-threshold")
class HardThreshold(OneShotMethod):
    """Per-layer hard thresholding (Pitas et al. 2019; module docstring): zero every |w| < t_l,
    t_l the left edge of the first bin of layer l's 100-bin |W| histogram whose CDF reaches p.

    After ``prune``, ``self.last_info`` lists per layer the threshold and the achieved sparsity.
    """

    Hparams = HardThresholdHparams

    def prune(self, model, masks=None, sparsity=0.5, calib=None) -> Masks:
        hp = self.hparams
        sparsity = check_sparsity(sparsity)
        masks = Masks.ones(model) if masks is None else masks
        masks.validate(model)
        # by the masks' names, which may carry wrapper prefixes or name a tied alias
        params = resolve_parameters(model, masks)
        names = list(masks)
        chosen = default_layers(unwrap(model), names, hp.include_last) if hp.layers is None else list(hp.layers)
        unknown = [n for n in chosen if n not in masks]
        if unknown or not chosen:
            raise ConfigError(f"hard-threshold: layers {unknown or chosen} cannot be pruned; "
                              f"choose among {names}")
        new = {n: masks[n].to(params[n].device).clone() for n in names}
        self.last_info = []
        for name in chosen:
            mask = masks[name].to(params[name].device)
            weight = params[name].detach() * mask
            if hp.exact:
                n_keep = keep_count(weight.numel(), int(mask.sum()), sparsity)
                new[name] = top_k_mask(weight.abs(), mask, n_keep).to(mask.device)
                threshold = None
            else:
                threshold = histogram_threshold(weight.abs(), sparsity, hp.bins)
                new[name] = mask & (weight.abs().double() >= threshold)
            self.last_info.append({"layer": name, "threshold": threshold,
                                   "sparsity": 1.0 - new[name].float().mean().item()})
        result = Masks(new)
        result.apply(model)
        return result
