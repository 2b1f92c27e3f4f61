"""Any data: what a batch is, how a model eats it, and what its loss is.

Wherever prunelab takes data (training, evaluation, calibration, every method), it accepts:

- a prunelab ``Split`` (``.x``, ``.y``) or ``Dataset`` (its ``train`` split);
- a pair ``(x, y)`` of tensors, or a ``torch.utils.data.TensorDataset`` of two tensors;
- a ``DataLoader`` or any re-iterable of batches (a list of batches, a generator function's
  result is used once);
- for calibration also unlabelled inputs: one tensor, or batches that are tensors or dicts.

Tensor data are *in-memory* data: prunelab batches them itself (seeded order, and sharded across
ranks under ``torch.distributed``). Other data are used batch by batch as they come.

A batch is whatever the data yields. Two functions say how a model uses one:

- ``forward_fn(model, batch) -> output``; default :func:`default_forward`: ``model(x)`` for a
  ``(x, y, ...)`` tuple or list, ``model(**batch)`` for a dict, ``model(batch)`` for a tensor;
- ``loss_fn(output, batch) -> scalar tensor``; default :func:`default_loss`: the output's own
  ``.loss`` / ``["loss"]`` when it has one (HuggingFace models given ``labels``), otherwise the
  cross-entropy of the logits against ``batch[1]`` (token-level for ``(batch, seq, vocab)``
  logits against ``(batch, seq)`` targets).

Example:
    >>> def lm_loss(output, batch):        # next-token loss of a causal language model
    ...     logits = output.logits[:, :-1]
    ...     return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch["input_ids"][:, 1:].reshape(-1))
    >>> prunelab.train(gpt2, loader, config, loss_fn=lm_loss)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from prunelab.errors import ConfigError

ForwardFn = Callable[[nn.Module, Any], Any]
LossFn = Callable[[Any, Any], torch.Tensor]


def default_forward(model: nn.Module, batch) -> Any:
    """``model(x)`` for ``(x, y, ...)``; ``model(**batch)`` for a dict; ``model(batch)`` for a
    tensor."""
    if isinstance(batch, Mapping):
        return model(**batch)
    if isinstance(batch, (tuple, list)):
        return model(batch[0])
    return model(batch)


def logits_of(output) -> torch.Tensor:
    """The logits tensor of a model output (a tensor, an object with ``.logits``, a dict with
    ``"logits"``, or a tuple whose first item is the logits)."""
    if isinstance(output, torch.Tensor):
        return output
    logits = getattr(output, "logits", None)
    if logits is None and isinstance(output, Mapping):
        logits = output.get("logits")
    if logits is None and isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        logits = output[0]
    if not isinstance(logits, torch.Tensor):
        raise ConfigError(f"cannot find logits in a model output of type {type(output).__name__}; "
                          "pass a loss_fn(output, batch)")
    return logits


def targets_of(batch) -> torch.Tensor | None:
    """The labels of a batch: ``batch[1]`` of a tuple/list, ``batch["labels"]`` of a dict, else
    None."""
    if isinstance(batch, Mapping):
        value = batch.get("labels")
        return value if isinstance(value, torch.Tensor) else None
    if isinstance(batch, (tuple, list)) and len(batch) > 1 and isinstance(batch[1], torch.Tensor):
        return batch[1]
    return None


def default_loss(output, batch) -> torch.Tensor:
    """The output's own loss when it has one, else the mean cross-entropy against the labels."""
    own = getattr(output, "loss", None)
    if own is None and isinstance(output, Mapping):
        own = output.get("loss")
    if isinstance(own, torch.Tensor):
        return own
    y = targets_of(batch)
    if y is None:
        raise ConfigError("the batches have no labels (not (x, y) pairs, no 'labels' key) and the "
                          "model returns no loss; pass a loss_fn(output, batch)")
    logits = logits_of(output)
    if logits.dim() > 2 and y.dim() == logits.dim() - 1:
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
    return F.cross_entropy(logits, y)


def batch_size_of(batch) -> int:
    """Samples in a batch: the length of its first tensor."""
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.dim() else 1
    if isinstance(batch, Mapping):
        values = list(batch.values())
    elif isinstance(batch, (tuple, list)):
        values = list(batch)
    else:
        return 1
    for value in values:
        if isinstance(value, torch.Tensor) and value.dim():
            return int(value.shape[0])
    return 1


def move_to(batch, device: torch.device | str, non_blocking: bool = False):
    """``batch`` with every tensor in it (nested tuples, lists, dicts) on ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=non_blocking)
    if isinstance(batch, Mapping):
        return type(batch)({k: move_to(v, device, non_blocking) for k, v in batch.items()}) \
            if type(batch) is dict else {k: move_to(v, device, non_blocking) for k, v in batch.items()}
    if isinstance(batch, tuple):
        return tuple(move_to(v, device, non_blocking) for v in batch)
    if isinstance(batch, list):
        return [move_to(v, device, non_blocking) for v in batch]
    return batch


def inputs_of(batch):
    """The model inputs of a batch: ``x`` of ``(x, y, ...)``, a dict or a tensor as it is."""
    if isinstance(batch, (tuple, list)):
        return batch[0]
    return batch


def tensor_pair(data) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(x, y)`` when ``data`` is in-memory labelled tensors (a ``Split``, a ``Dataset``'s train
    split, an ``(x, y)`` pair, a two-tensor ``TensorDataset``), else None."""
    if hasattr(data, "train") and hasattr(data, "val") and hasattr(data.train, "x"):
        data = data.train
    x, y = getattr(data, "x", None), getattr(data, "y", None)
    if isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor):
        return x, y
    tensors = getattr(data, "tensors", None)
    if isinstance(data, torch.utils.data.TensorDataset) and len(tensors) == 2:
        return tensors[0], tensors[1]
    if (isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data)
            and data[0].dim() > 0 and data[1].dim() > 0 and len(data[0]) == len(data[1])):
        return data[0], data[1]
    return None


def check_iterable(data, what: str = "data") -> Iterable:
    """``data`` if it can be iterated for batches; a :class:`ConfigError` naming what is accepted
    otherwise."""
    if data is None or isinstance(data, (str, bytes)) or not isinstance(data, Iterable):
        raise ConfigError(
            f"{what} must be a prunelab Split or Dataset, an (x, y) pair of tensors, a TensorDataset, "
            f"a DataLoader or an iterable of batches; got {type(data).__name__}")
    return data


@dataclass
class Calibration:
    """Calibration batches and the forward that uses them.

    Attributes:
        batches: what ``forward_fn`` takes, batch by batch, on the CPU or any device: with a
            ``forward_fn``, the batches as the data yields them (so the ``forward_fn`` written
            for training works unchanged; in-memory tensors give tensor chunks of the inputs);
            without one, the model inputs (labels dropped).
        forward_fn: ``forward_fn(model, batch)``, the same function training takes; default
            ``model(x)`` for a tensor, ``model(**inputs)`` for a dict.
    """

    batches: list
    forward_fn: ForwardFn | None = None

    def forward(self, model: nn.Module, inputs):
        """Run ``model`` on one batch of inputs (moved to the model's device)."""
        device = _device_of(model)
        inputs = move_to(inputs, device)
        if self.forward_fn is not None:
            return self.forward_fn(model, inputs)
        return default_forward(model, inputs)

    @property
    def num_samples(self) -> int:
        """Samples over all batches."""
        return sum(batch_size_of(b) for b in self.batches)

    def tensor(self) -> torch.Tensor:
        """All inputs as one tensor (for methods that need a matrix of inputs).

        Raises:
            ConfigError: the inputs are not tensors (dict batches).
        """
        inputs = [inputs_of(b) for b in self.batches]
        if not all(isinstance(x, torch.Tensor) for x in inputs):
            raise ConfigError("this needs calibration inputs that are tensors, not dicts")
        return torch.cat(inputs) if inputs else torch.empty(0)


def _device_of(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def as_calibration(calib, forward_fn: ForwardFn | None = None, batch_size: int = 1000,
                   max_samples: int | None = None) -> Calibration:
    """Calibration batches from any data (see the module docstring): whole batches for a
    ``forward_fn`` (as in training), the inputs with labels dropped for the default forward.

    Args:
        calib: a ``Split``/``Dataset``, one tensor of inputs, an ``(x, y)`` pair, a
            ``TensorDataset``, a ``DataLoader`` or any iterable of batches, or a
            :class:`Calibration` (returned as it is, with ``forward_fn`` set if given).
        forward_fn: ``forward_fn(model, batch)`` as in training (see :class:`Calibration`).
        batch_size: batch size when ``calib`` is in-memory tensors.
        max_samples: keep at most this many samples (the first ones).

    Raises:
        ConfigError: no calibration data, an empty set, or something that is not data.
    """
    if isinstance(calib, Calibration):
        if forward_fn is not None and calib.forward_fn is None:
            return Calibration(calib.batches, forward_fn)
        return calib
    if calib is None:
        raise ConfigError("calibration data is missing: pass calib= a Split, a tensor of inputs, "
                          "an (x, y) pair, a TensorDataset or a DataLoader")
    pair = tensor_pair(calib)
    x = pair[0] if pair is not None else calib if isinstance(calib, torch.Tensor) else None
    if x is not None:
        if x.dim() == 0 or len(x) == 0:
            raise ConfigError("calibration data is empty; pass at least one sample")
        if max_samples is not None:
            x = x[:max_samples]
        return Calibration(list(x.split(batch_size)), forward_fn)
    batches, seen = [], 0
    for batch in check_iterable(calib, "calib"):
        # A forward_fn written for training takes whole batches; the default forward takes inputs.
        inputs = inputs_of(batch) if forward_fn is None else batch
        if max_samples is not None and seen >= max_samples:
            break
        n = batch_size_of(inputs)
        if max_samples is not None and seen + n > max_samples:
            inputs = _head(inputs, max_samples - seen)
            n = max_samples - seen
        batches.append(inputs)
        seen += n
    if not batches:
        raise ConfigError("calibration data is empty (the iterable gave no batch)")
    return Calibration(batches, forward_fn)


def _head(inputs, n: int):
    if isinstance(inputs, torch.Tensor):
        return inputs[:n] if inputs.dim() else inputs
    if isinstance(inputs, Mapping):
        return {k: _head(v, n) for k, v in inputs.items()}
    if isinstance(inputs, (tuple, list)):
        return type(inputs)(_head(v, n) for v in inputs)
    return inputs
