"""Re-estimating batch-norm statistics after the weights changed (pruning, interpolation)."""

from __future__ import annotations

import torch
from torch import nn
from torch.optim.swa_utils import update_bn


def recalibrate_batchnorm(model: nn.Module, x: torch.Tensor, batch_size: int = 250) -> bool:
    """Re-estimate every batch-norm layer's running statistics on inputs ``x``.

    The running mean and variance a network learned belong to its weights; after pruning or
    interpolating they are stale. They are recomputed as exact averages over ``x`` (momentum None)
    in training mode without gradients, by :func:`torch.optim.swa_utils.update_bn`, which restores
    each layer's momentum and the model's mode afterwards.

    Args:
        model: the network (changed in place).
        x: calibration inputs (a few thousand training samples).
        batch_size: forward batch size.

    Returns:
        True if the model has batch-norm layers (and they were re-estimated).
    """
    has_norms = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    if not has_norms or len(x) == 0:
        return False
    device = next(model.parameters()).device
    update_bn((x[start:start + batch_size] for start in range(0, len(x), batch_size)), model, device=device)
    return True
