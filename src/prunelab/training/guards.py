"""What keeps a training step sound: mixed precision (:class:`Precision`), the divergence
check (:class:`DivergenceGuard`) and the input-shape check (:func:`check_input_shape`)."""

from __future__ import annotations

import contextlib
import math

import torch
from torch import nn

from prunelab.core.prunable import unwrap
from prunelab.errors import ConfigError, DivergenceError
from prunelab.training.batches import inputs_of

#: A batch's task loss above this many times ``max(first batch's loss, 1)`` is divergence.
DIVERGENCE_FACTOR = 1e3


class Precision:
    """The autocast context and the gradient scaling of ``TrainConfig.amp``.

    ``"none"`` runs everything in full precision; ``"bf16"`` runs the forward and the loss under
    ``torch.autocast(dtype=torch.bfloat16)`` on the model's device type (CPU or GPU; no scaling:
    bfloat16 has float32's range); ``"fp16"`` autocasts to float16 and scales the loss with a
    ``torch.amp.GradScaler`` (skipping steps whose gradients overflow). float16 needs CUDA: on a CPU
    it brings no speed and without scaling its gradients underflow, so it is refused.

    Args:
        amp: ``"none"``, ``"bf16"`` or ``"fp16"``.
        device: the model's device.

    Raises:
        ConfigError: ``"fp16"`` off CUDA, or ``"bf16"`` on a GPU without bfloat16.

    Example:
        >>> precision = Precision("bf16", torch.device("cpu"))
        >>> with precision.autocast():
        ...     loss = loss_fn(model(x), batch)
        >>> precision.backward(loss); precision.step(optimizer)
    """

    def __init__(self, amp: str, device: torch.device):
        self.dtype = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]
        self.device_type = device.type
        self.scaler = None
        if amp == "fp16":
            if device.type != "cuda":
                raise ConfigError(f"amp 'fp16' needs a CUDA device (the model is on {device}); "
                                  "use amp 'bf16' there, or 'none'")
            self.scaler = torch.amp.GradScaler("cuda")
        if amp == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ConfigError("amp 'bf16': this GPU has no bfloat16; use amp 'fp16'")

    def autocast(self):
        """The context to run the forward and the loss in."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor) -> None:
        """Backpropagate ``loss`` (scaled under ``"fp16"``)."""
        (loss if self.scaler is None else self.scaler.scale(loss)).backward()

    def unscale_(self, optimizer: torch.optim.Optimizer) -> None:
        """Bring the gradients back to their true scale (before clipping them)."""
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        """``optimizer.step()``; under ``"fp16"`` skipped when the gradients overflowed."""
        if self.scaler is None:
            optimizer.step()
        else:
            self.scaler.step(optimizer)
            self.scaler.update()


class DivergenceGuard:
    """Stops a diverging run: a batch's task loss that is not finite, or above
    ``DIVERGENCE_FACTOR × max(first batch's loss, 1)``.

    The task loss excludes callbacks' extra losses (regularisers such as gRDA's or LTP's). The
    factor leaves room for every healthy run (a cross-entropy starting near ln(classes) would have
    to pass 1000, i.e. wrong-class logit margins of ~1000) while a blown-up run passes it within
    a step or two; the floor of 1 keeps a well-trained model's tiny first loss from making the
    limit tight.

    Example:
        >>> guard = DivergenceGuard()
        >>> guard.check(2.3, epoch=1, epochs=3, step=1, lr=0.1)        # the reference
        >>> guard.check(float("nan"), epoch=1, epochs=3, step=2, lr=0.1)
        Traceback (most recent call last):
        prunelab.errors.DivergenceError: training diverged in epoch 1/3, step 2: ...
    """

    def __init__(self):
        self.first: float | None = None

    def check(self, loss: float, *, epoch: int, epochs: int, step: int, lr: float) -> None:
        """Raise :class:`DivergenceError` when ``loss`` (a batch's task loss) shows divergence.

        Args:
            loss: the batch's task loss.
            epoch: the 1-based epoch, for the message.
            epochs: epochs of the run.
            step: the 1-based step of the run.
            lr: the current learning rate, for the message.
        """
        if math.isfinite(loss):
            if self.first is None:
                self.first = loss
                return
            limit = DIVERGENCE_FACTOR * max(self.first, 1.0)
            if loss <= limit:
                return
            why = f"over {limit:.4g}, {DIVERGENCE_FACTOR:g} x max(the first batch's {self.first:.4g}, 1)"
        else:
            why = "not finite"
        raise DivergenceError(
            f"training diverged in epoch {epoch}/{epochs}, step {step}: the training loss is {loss:.4g} "
            f"({why}); stopped before this step's update. Lower the learning rate (lr {lr:.4g}) or set "
            "clip_grad_norm")


def check_input_shape(model: nn.Module, batch) -> None:
    """Refuse a batch whose samples do not have the shape a prunelab model was built for.

    Models made by ``prunelab.models.create`` record ``prunelab_config["in_shape"]``; data of
    another shape would otherwise fail deep inside the forward with a matrix-size error. Other
    models (and dict batches) are not checked.

    Raises:
        ConfigError: the batch's sample shape differs from the recorded one (both are named).
    """
    config = getattr(unwrap(model), "prunelab_config", None)
    in_shape = config.get("in_shape") if isinstance(config, dict) else None
    x = inputs_of(batch)
    if in_shape is None or not isinstance(x, torch.Tensor) or x.dim() < 1:
        return
    if tuple(x.shape[1:]) != tuple(in_shape):
        raise ConfigError(f"the data's samples have shape {tuple(x.shape[1:])} but the model "
                          f"({config.get('name', type(model).__name__)}) was built for {tuple(in_shape)}; "
                          f"pass data of that shape or a model built for this data")

