"""Re-estimating batch-norm statistics after the weights changed (pruning, interpolation)."""

from __future__ import annotations

import torch
from torch import nn

from prunelab.training.batches import ForwardFn, as_calibration


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, calib, batch_size: int = 250, forward_fn: ForwardFn | None = None) -> bool:
    """Re-estimate every batch-norm layer's running statistics on calibration data.

    The running mean and variance a network learned belong to its weights; after pruning or
    interpolating they are stale. They are reset and recomputed as exact averages over the
    calibration batches (momentum None) in training mode without gradients, as
    :func:`torch.optim.swa_utils.update_bn` does, which also restores each layer's momentum and
    the model's mode afterwards; the batches go to the model's device.

    Args:
        model: the network (changed in place).
        calib: calibration data, anything ``prunelab.training.batches.as_calibration`` takes (a
            tensor of inputs, a ``Split``, an ``(x, y)`` pair, a ``DataLoader``, ...; a few
            thousand training samples).
        batch_size: forward batch size for in-memory tensors.
        forward_fn: ``forward_fn(model, inputs)`` (default ``model(x)``, ``model(**inputs)``).

    Returns:
        True if the model has batch-norm layers and there was data (and they were re-estimated).

    Example:
        >>> recalibrate_batchnorm(model, data.train.x[:2000])
        True
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms or (isinstance(calib, torch.Tensor) and len(calib) == 0):
        return False
    calibration = as_calibration(calib, forward_fn, batch_size=batch_size)
    momenta = {}
    for module in norms:
        module.reset_running_stats()
        momenta[module] = module.momentum
    was_training = model.training
    model.train()
    for module in norms:
        module.momentum = None
    try:
        for inputs in calibration.batches:
            calibration.forward(model, inputs)
    finally:
        for module, momentum in momenta.items():
            module.momentum = momentum
        model.train(was_training)
    return True
