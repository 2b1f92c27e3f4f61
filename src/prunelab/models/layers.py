"""Building blocks shared by the models: the max-norm constraint, ``Network``, the SAP
initialisation, dense stacks and the dry forward pass that sizes and checks them.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from prunelab.errors import ModelError
from prunelab.utils.memory import is_out_of_memory


def dry_forward(module: nn.Module, in_shape: tuple[int, ...], what: str) -> torch.Tensor:
    """One eval-mode forward pass of a zero sample; ModelError if the shape does not fit.

    Args:
        module: the network or feature extractor.
        in_shape: shape of one input sample.
        what: names the module in messages.

    Returns:
        The output for one sample (the module's training mode is restored).
    """
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            out = module(torch.zeros(1, *in_shape))
    except (RuntimeError, MemoryError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__  # torch adds a C++ trace
        if is_out_of_memory(err):
            raise ModelError(f"{what} does not fit in memory for inputs of shape {in_shape} ({reason}); "
                             "use smaller inputs or a smaller model") from err
        raise ModelError(
            f"{what} cannot take inputs of shape {in_shape}: {reason}. Use larger inputs or fewer "
            "pooling stages / more padding"
        ) from err
    finally:
        module.train(was_training)
    if out.numel() == 0:
        raise ModelError(f"{what} reduces inputs of shape {in_shape} to nothing; use larger inputs")
    return out


def max_norm_(weight: torch.Tensor, max_norm: float) -> torch.Tensor:
    """Rescale, in place, every output unit's incoming weight vector to L2 norm ≤ ``max_norm``.

    Keras ``MaxNorm(max_value, axis=0)`` (Srivastava et al. 2014, §5.1), the constraint of the
    Pitas et al. (2019) networks: Keras kernels are ``(in, out)`` and ``axis=0`` takes
    the norm over the inputs, i.e. one norm per output unit, which is one ROW of torch's
    ``(out, in)`` weight (a conv weight is viewed as ``(out, in·kh·kw)``). Keras multiplies every
    column by ``clip(n, 0, m) / (1e-7 + n)``, which also shrinks unconstrained rows by a relative
    ~1e-7; here rows already within the bound are left bit-identical (zeros stay zero, so masks
    survive).

    Args:
        weight: a parameter of shape ``(out, ...)``.
        max_norm: the bound ``m`` (Keras ``max_value``).

    Returns:
        ``weight`` (modified in place).
    """
    with torch.no_grad():
        rows = weight.view(weight.shape[0], -1)
        norms = rows.norm(dim=1, keepdim=True)
        over = norms > max_norm
        if over.any():
            scale = torch.where(over, max_norm / norms.clamp_min(1e-12), torch.ones_like(norms))
            rows.mul_(scale)
    return weight


class Network(nn.Sequential):
    """An ``nn.Sequential`` of named layers with an optional max-norm weight constraint.

    Args:
        layers: ``OrderedDict`` name → module, in forward order.
        max_norm: bound for :func:`max_norm_`, or None for no constraint.
        max_norm_layers: names of the layers whose weights are constrained.
    """

    def __init__(self, layers: OrderedDict, max_norm: float | None = None, max_norm_layers=()):
        super().__init__(layers)
        self.max_norm = max_norm
        self.max_norm_layers = tuple(max_norm_layers)

    def apply_constraint(self) -> None:
        """Apply the max-norm constraint (the training loop calls this after every optimizer step)."""
        if self.max_norm is None:
            return
        for name in self.max_norm_layers:
            max_norm_(self.get_submodule(name).weight, self.max_norm)


def sap_init(model: nn.Module) -> nn.Module:
    """The PQ Index code's ``init_param`` (Diao et al., ICLR 2023), applied to every submodule.

    Conv weights kaiming-normal (fan_out, ReLU), conv and Linear biases 0, Linear weights left at
    the PyTorch default, BN γ=1, β=0.
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)
    return model


def dense_layers(d_in: int, hidden, num_classes: int, dropout: float | None = None, tag: str = ""):
    """[drop{tag}0] → fc1 → relu{tag}1 → [drop{tag}1] → … → fc(n+1) as an OrderedDict.

    Dropout (when given) on the input and after each hidden layer, as in Pitas et al. (2019).
    """
    layers: OrderedDict = OrderedDict()
    if dropout is not None:
        layers[f"drop{tag}0"] = nn.Dropout(dropout)
    width = d_in
    for i, h in enumerate(hidden, start=1):
        layers[f"fc{i}"] = nn.Linear(width, h)
        layers[f"relu{tag}{i}"] = nn.ReLU()
        if dropout is not None:
            layers[f"drop{tag}{i}"] = nn.Dropout(dropout)
        width = h
    layers[f"fc{len(hidden) + 1}"] = nn.Linear(width, num_classes)
    return layers


def flatten_then(layers: OrderedDict) -> OrderedDict:
    """``layers`` preceded by a ``flatten`` layer."""
    return OrderedDict(flatten=nn.Flatten(), **layers)


def flat_size(layers: OrderedDict, in_shape: tuple[int, ...]) -> int:
    """The number of features ``layers`` produce for one input of ``in_shape``."""
    probe = nn.Sequential(layers)
    return dry_forward(probe, in_shape, "the feature extractor").numel()
