"""Model registry: ``create(name, in_shape, num_classes, **kwargs)`` over decorator-registered factories.

Every model the papers in ``papers.md`` use, built for any sensible input shape (flatten sizes
are computed from a dry forward pass, never hard-coded):

- ``linear`` (SAP init): flatten → Linear(d_in, C); PQ Index paper (papers.md §2.5).
- ``mlp`` (SAP init): Linear(d_in,128)-ReLU-Linear(128,256)-ReLU-Linear(256,C) (§2.5);
  ``hidden=(512,)`` gives the gRDA demo MLP 784-512-10 (§4.4).
- ``lenet-300-100`` (PyTorch init): d_in-300-100-C, ReLU (LTP target, §5).
- ``fc`` (PyTorch init): Pitas et al. FC net, Drop-100-Drop-100-Drop-C, max-norm 3 (§1.6(a)).
- ``lenet5`` (PyTorch init): Caffe LeNet-5, Conv20(5)-Pool-Conv50(5)-Pool-FC500-FC C (§4.4).
- ``cnn`` (SAP init): PQ Index CNN, 4 × [Conv3x3-BN-ReLU(-MaxPool)] → GAP → Linear (§2.5).
- ``conv6`` (PyTorch init): Pitas et al. CIFAR CNN, 6 convs + Dense1024-512 with max-norm (§1.6(b)).
- ``vgg16`` (SAP init): CIFAR VGG16, classifier Dropout-512-Dropout-512-C (gRDA, §4.3).
- ``resnet18`` (SAP init): pre-activation CIFAR ResNet18 (PQ Index paper, §2.5).
- ``wrn`` (SAP init): wide ResNet, depth 28, widen factor 10 (gRDA §4.3; PQ Index uses 28×8).

"SAP" init is the PQ Index code's ``init_param`` (papers.md §2.4): conv weights kaiming-normal
(fan_out, ReLU), conv and Linear biases 0, Linear weights left at the PyTorch default, BN γ=1, β=0.
"PyTorch" means the layers' own default initialisation.

Every created model carries ``model.prunelab_config`` (``name``, ``kwargs`` with every default
filled in, ``in_shape``, ``num_classes``), a plain JSON-able dict in which sequences are lists;
``create(**model.prunelab_config)`` or :func:`from_config` rebuilds the same architecture.

ReLUs are separate, non-inplace ``nn.ReLU`` modules so that forward hooks on a layer (layer-wise
pruning captures activations this way) see that layer's output unchanged.

Example:
    >>> from prunelab import models
    >>> net = models.create("mlp", (1, 28, 28), 10, hidden=(512,))
    >>> net.prunelab_config
    {'name': 'mlp', 'kwargs': {'hidden': [512]}, 'in_shape': [1, 28, 28], 'num_classes': 10}
"""

from __future__ import annotations

import builtins
import difflib
import inspect
import json
import math
import operator
from collections import OrderedDict
from typing import Any, Callable

import torch
from torch import nn

from prunelab.errors import ModelError

__all__ = [
    "register",
    "create",
    "from_config",
    "list_models",
    "defaults",
    "max_norm_",
    "Network",
    "PreActResNet",
    "WideResNet",
]

Factory = Callable[..., nn.Module]
_SEQUENCE = (builtins.list, tuple)  # the module-level ``list`` below is list_models
_REGISTRY: dict[str, Factory] = {}


# --------------------------------------------------------------------------- registry


def register(name: str) -> Callable[[Factory], Factory]:
    """Register a model factory under ``name`` (a decorator).

    The factory's signature must be ``factory(in_shape, num_classes, *, kw=default, ...)``: the
    model's own options are keyword-only with defaults, so :func:`create` can check them and
    record them all in ``prunelab_config``.

    Args:
        name: registry key, lower case (``create`` matches names case-insensitively).

    Returns:
        A decorator that registers the factory and returns it unchanged.

    Raises:
        ModelError: ``name`` is taken or the factory's signature does not follow the rule above.
    """
    key = name.strip().lower()

    def decorator(factory: Factory) -> Factory:
        if key in _REGISTRY:
            raise ModelError(f"a model named {key!r} is already registered; pick another name")
        params = [*inspect.signature(factory).parameters.values()]
        positional = [p for p in params if p.kind is not inspect.Parameter.KEYWORD_ONLY]
        options = [p for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY]
        if len(positional) != 2 or any(p.default is inspect.Parameter.empty for p in options):
            raise ModelError(
                f"model factory {factory.__name__!r} must have the signature "
                "(in_shape, num_classes, *, option=default, ...)"
            )
        _REGISTRY[key] = factory
        return factory

    return decorator


def list_models() -> list[str]:
    """Names of all registered models, sorted.

    Returns:
        The registry keys (also available as ``prunelab.models.list()``).
    """
    return sorted(_REGISTRY)


def defaults(name: str) -> dict[str, Any]:
    """The options a model accepts, with their defaults (JSON form: sequences as lists).

    Args:
        name: a registered model name.

    Returns:
        ``{option: default}``; empty for models without options.

    Raises:
        ModelError: unknown name.
    """
    factory = _REGISTRY[_lookup(name)]
    return {
        p.name: _to_json(p.default)
        for p in inspect.signature(factory).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    }


def create(name: str, in_shape, num_classes: int, **kwargs) -> nn.Module:
    """Build a registered model for inputs of shape ``in_shape`` and ``num_classes`` outputs.

    The model is checked with one forward pass of a zero input (eval mode, no grad, so neither
    the random number generator nor BN running statistics are touched): an input too small for
    the model's pooling stages fails here, not in the middle of training.

    Args:
        name: registered model name (see :func:`list_models`), case-insensitive.
        in_shape: shape of one input sample, e.g. ``(1, 28, 28)``; convolutional models need
            ``(channels, height, width)``.
        num_classes: number of outputs (logits).
        **kwargs: the model's options (see :func:`defaults`). ``create(**model.prunelab_config)``
            is accepted too: a ``kwargs=`` dict is unpacked.

    Returns:
        The model in training mode, with ``model.prunelab_config`` set.

    Raises:
        ModelError: unknown name or option, a bad option value, or an input shape the model
            cannot take.
    """
    if "kwargs" in kwargs:
        nested = kwargs.pop("kwargs")
        if kwargs or not isinstance(nested, dict):
            raise ModelError(
                "pass model options either as keywords or as one 'kwargs' dict (as in "
                "model.prunelab_config), not both"
            )
        kwargs = nested
    key = _lookup(name)
    factory = _REGISTRY[key]
    shape = _check_in_shape(key, in_shape)
    classes = _check_num_classes(key, num_classes)
    options = _resolve_options(key, factory, kwargs)
    try:
        model = factory(shape, classes, **options)
    except ModelError as err:
        raise ModelError(f"model {key!r}: {err}") from err
    except (TypeError, ValueError, RuntimeError) as err:
        raise ModelError(f"model {key!r} could not be built with {_to_json(options)}: {err}") from err
    out = _dry_forward(model, shape, f"model {key!r}")
    if tuple(out.shape) != (1, classes):  # a bug in a factory, not in the user's input
        raise ModelError(f"model {key!r} returned shape {tuple(out.shape)}, expected (1, {classes})")
    model.prunelab_config = {
        "name": key,
        "kwargs": _to_json(options),
        "in_shape": [*shape],
        "num_classes": classes,
    }
    return model


def from_config(config: dict) -> nn.Module:
    """Rebuild a model from a ``prunelab_config`` dict (weights are freshly initialised).

    Args:
        config: ``{"name", "kwargs", "in_shape", "num_classes"}``, e.g. read back from JSON.

    Returns:
        A new model with the same architecture and the same ``prunelab_config``.

    Raises:
        ModelError: the dict lacks a key or names an unknown model or option.
    """
    missing = [k for k in ("name", "in_shape", "num_classes") if k not in config]
    if missing:
        raise ModelError(f"model config lacks {', '.join(missing)}; got keys {sorted(config)}")
    return create(config["name"], config["in_shape"], config["num_classes"], **config.get("kwargs", {}))


def _lookup(name) -> str:
    key = name.strip().lower() if isinstance(name, str) else None
    if key not in _REGISTRY:
        close = difflib.get_close_matches(str(key), _REGISTRY, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ModelError(
            f"unknown model {name!r}{hint}; known models: {', '.join(list_models())}"
        )
    return key


def _check_in_shape(key: str, in_shape) -> tuple[int, ...]:
    try:
        shape = tuple(operator.index(d) for d in in_shape)
    except TypeError:
        shape = ()
    if not shape or any(d < 1 for d in shape) or any(isinstance(d, bool) for d in in_shape):
        raise ModelError(
            f"model {key!r}: in_shape must be a non-empty sequence of positive integers such as "
            f"(1, 28, 28), got {in_shape!r}"
        )
    return shape


def _check_num_classes(key: str, num_classes) -> int:
    if isinstance(num_classes, bool):
        num_classes = None
    try:
        classes = operator.index(num_classes)
    except TypeError:
        classes = 0
    if classes < 1:
        raise ModelError(f"model {key!r}: num_classes must be a positive integer, got {num_classes!r}")
    return classes


def _resolve_options(key: str, factory: Factory, kwargs: dict) -> dict[str, Any]:
    """Fill in defaults, reject unknown options, turn lists into tuples (one canonical form)."""
    accepted = {
        p.name: p.default
        for p in inspect.signature(factory).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    }
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        offer = ", ".join(f"{k}={_to_json(v)!r}" for k, v in accepted.items()) or "no options"
        raise ModelError(f"model {key!r} got unknown option(s) {', '.join(unknown)}; it accepts: {offer}")
    options = {k: _canonical(key, k, kwargs.get(k, default)) for k, default in accepted.items()}
    try:
        json.dumps(_to_json(options))
    except (TypeError, ValueError) as err:
        raise ModelError(
            f"model {key!r}: options must be JSON-able (numbers, strings, lists): {err}"
        ) from err
    return options


def _canonical(key: str, option: str, value):
    if isinstance(value, _SEQUENCE):
        return tuple(_canonical(key, option, v) for v in value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise ModelError(
        f"model {key!r}: option {option} must be a number, string, bool, None or a sequence of "
        f"these, got {type(value).__name__}"
    )


def _to_json(value):
    if isinstance(value, _SEQUENCE):
        return [_to_json(v) for v in value]
    if isinstance(value, dict):
        return {k: _to_json(v) for k, v in value.items()}
    return value


def _dry_forward(module: nn.Module, in_shape: tuple[int, ...], what: str) -> torch.Tensor:
    """One eval-mode forward pass of a zero sample; ModelError if the shape does not fit."""
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            out = module(torch.zeros(1, *in_shape))
    except RuntimeError as err:
        raise ModelError(
            f"{what} cannot take inputs of shape {in_shape}: {err}. Use larger inputs or fewer "
            "pooling stages / more padding"
        ) from err
    finally:
        module.train(was_training)
    if out.numel() == 0:
        raise ModelError(f"{what} reduces inputs of shape {in_shape} to nothing; use larger inputs")
    return out


# --------------------------------------------------------------------------- option checks


def _positive_ints(option: str, value, allow_empty: bool = False) -> tuple[int, ...]:
    values = value if isinstance(value, tuple) else (value,)
    ok = all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in values)
    if not ok or (not values and not allow_empty):
        raise ModelError(
            f"{option} must be a non-empty sequence of positive integers, got {_to_json(value)!r}"
        )
    return values


def _positive_int(option: str, value) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ModelError(f"{option} must be a positive integer, got {value!r}")
    return value


def _probability(option: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise ModelError(f"{option} must be a probability in [0, 1), got {value!r}")
    return float(value)


def _positive_float(option: str, value, allow_none: bool = False) -> float | None:
    if value is None and allow_none:
        return None
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not number or not math.isfinite(value) or value <= 0:
        none = " or None" if allow_none else ""
        raise ModelError(f"{option} must be a positive number{none}, got {value!r}")
    return float(value)


def _flag(option: str, value) -> bool:
    if not isinstance(value, bool):
        raise ModelError(f"{option} must be true or false, got {value!r}")
    return value


def _chw(in_shape: tuple[int, ...]) -> tuple[int, int, int]:
    if len(in_shape) != 3:
        raise ModelError(f"needs an input shape (channels, height, width), got {in_shape}")
    return in_shape  # type: ignore[return-value]


def _scaled(channels: int, width: float) -> int:
    return max(1, int(round(channels * width)))


# --------------------------------------------------------------------------- building blocks


def max_norm_(weight: torch.Tensor, max_norm: float) -> torch.Tensor:
    """Rescale, in place, every output unit's incoming weight vector to L2 norm ≤ ``max_norm``.

    Keras ``MaxNorm(max_value, axis=0)`` (Srivastava et al. 2014, §5.1), the constraint of the
    Pitas et al. networks (papers.md §1.6): Keras kernels are ``(in, out)`` and ``axis=0`` takes
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


def _sap_init(model: nn.Module) -> nn.Module:
    """The PQ Index code's ``init_param`` (papers.md §2.4), applied to every submodule."""
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


def _dense_layers(d_in: int, hidden, num_classes: int, dropout: float | None = None, tag: str = ""):
    """[drop{tag}0] → fc1 → relu{tag}1 → [drop{tag}1] → … → fc(n+1) as an OrderedDict.

    Dropout (when given) on the input and after each hidden layer, as Pitas et al. (§1.6(a)).
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


def _flatten_then(layers: OrderedDict) -> OrderedDict:
    return OrderedDict(flatten=nn.Flatten(), **layers)


def _flat_size(layers: OrderedDict, in_shape: tuple[int, ...]) -> int:
    probe = nn.Sequential(layers)
    return _dry_forward(probe, in_shape, "the feature extractor").numel()


# --------------------------------------------------------------------------- fully connected


@register("linear")
def _linear(in_shape, num_classes):
    """flatten → Linear(d_in, C); the PQ Index paper's "Linear" model (papers.md §2.5), SAP init."""
    layers = OrderedDict(flatten=nn.Flatten(), fc=nn.Linear(math.prod(in_shape), num_classes))
    return _sap_init(Network(layers))


@register("mlp")
def _mlp(in_shape, num_classes, *, hidden=(128, 256)):
    """ReLU MLP; default 784-128-256-C is the PQ Index paper's MLP (§2.5), SAP init (biases 0).

    ``hidden=(512,)`` is the gRDA demo MLP 784-512-10 (papers.md §4.4); Keras also zeroes biases.
    Layers are named fc1…fc(n+1).
    """
    hidden = _positive_ints("hidden", hidden)
    return _sap_init(Network(_flatten_then(_dense_layers(math.prod(in_shape), hidden, num_classes))))


@register("lenet-300-100")
def _lenet_300_100(in_shape, num_classes):
    """LeNet-300-100 (LeCun et al. 1998; the LTP experiment of papers.md §5): d_in-300-100-C, ReLU.

    PyTorch default init. 266,610 parameters for 1×28×28 and 10 classes.
    """
    return Network(_flatten_then(_dense_layers(math.prod(in_shape), (300, 100), num_classes)))


@register("fc")
def _fc(in_shape, num_classes, *, hidden=(100, 100), dropout=0.2, max_norm=3.0):
    """Pitas et al.'s FC network (papers.md §1.6(a); FeTa code ``train_fashion_mnist.py``).

    flatten → Dropout → [Linear → ReLU → Dropout] per hidden layer → Linear(C). The hidden layers'
    weights carry Keras ``maxnorm(3)`` (see :func:`max_norm_`; applied by ``apply_constraint()``,
    which the training loop calls after each step); the output layer has no constraint, as in the
    authors' Keras code. ``max_norm=None`` disables it. MNIST used ``hidden=(60, 60)``.
    PyTorch default init (the Keras original uses Glorot-uniform weights and zero biases).
    """
    hidden = _positive_ints("hidden", hidden)
    dropout = _probability("dropout", dropout)
    max_norm = _positive_float("max_norm", max_norm, allow_none=True)
    layers = _flatten_then(_dense_layers(math.prod(in_shape), hidden, num_classes, dropout=dropout))
    return Network(layers, max_norm, [f"fc{i}" for i in range(1, len(hidden) + 1)])


# --------------------------------------------------------------------------- plain CNNs


@register("lenet5")
def _lenet5(in_shape, num_classes, *, padding=None):
    """Caffe LeNet-5: Conv(20,5) → MaxPool2 → Conv(50,5) → MaxPool2 → FC500 → ReLU → FC C.

    A ReLU also follows each conv, as in the PyTorch MNIST example that the gRDA demo uses
    (papers.md §4.4); Caffe's prototxt has none (the parameter count is the same: 431,080 for
    1×28×28, 10 classes). ``padding=None`` picks 0 when height and width are ≥ 16 (the original)
    and 2 ("same" for 5×5 kernels) for smaller inputs such as 8×8 digits; an int forces it.
    PyTorch default init.
    """
    channels, height, width = _chw(in_shape)
    if padding is None:
        padding = 0 if min(height, width) >= 16 else 2
    elif isinstance(padding, bool) or not isinstance(padding, int) or padding < 0:
        raise ModelError(f"padding must be None (automatic) or an integer ≥ 0, got {padding!r}")
    features = OrderedDict(
        conv1=nn.Conv2d(channels, 20, 5, padding=padding),
        relu1=nn.ReLU(),
        pool1=nn.MaxPool2d(2),
        conv2=nn.Conv2d(20, 50, 5, padding=padding),
        relu2=nn.ReLU(),
        pool2=nn.MaxPool2d(2),
        flatten=nn.Flatten(),
    )
    flat = _flat_size(features, in_shape)
    layers = OrderedDict(features, fc1=nn.Linear(flat, 500), relu3=nn.ReLU(), fc2=nn.Linear(500, num_classes))
    return Network(layers)


@register("cnn")
def _cnn(in_shape, num_classes, *, widths=(64, 128, 256, 512), batch_norm=True):
    """The PQ Index paper's CNN (papers.md §2.5; code ``src/models/cnn.py``), SAP init.

    Per width w: Conv3x3(w, padding 1, with bias as in the code) → BN → ReLU → MaxPool2, the last
    block without pool; then AdaptiveAvgPool(1) → Linear(widths[-1], C). Narrow ``widths`` give
    small versions (e.g. the LTP batch-norm study on CPU). ``batch_norm=False`` drops the BN
    layers and nothing else (the LTP study's control: same convs, names and initialisation).
    """
    channels, _, _ = _chw(in_shape)
    widths = _positive_ints("widths", widths)
    batch_norm = _flag("batch_norm", batch_norm)
    layers: OrderedDict = OrderedDict()
    for i, w in enumerate(widths, start=1):
        layers[f"conv{i}"] = nn.Conv2d(channels, w, 3, padding=1)
        if batch_norm:
            layers[f"bn{i}"] = nn.BatchNorm2d(w)
        layers[f"relu{i}"] = nn.ReLU()
        if i < len(widths):
            layers[f"pool{i}"] = nn.MaxPool2d(2)
        channels = w
    layers["avgpool"] = nn.AdaptiveAvgPool2d(1)
    layers["flatten"] = nn.Flatten()
    layers["fc"] = nn.Linear(channels, num_classes)
    return _sap_init(Network(layers))


@register("conv6")
def _conv6(in_shape, num_classes, *, widths=(32, 64, 128), dense=(1024, 512), dropout=0.2, max_norm=3.0):
    """Pitas et al.'s CIFAR CNN (papers.md §1.6(b); code ``create_model_Cifar.py``).

    Per stage width w: Conv3x3(w, same) → ReLU → Dropout → Conv3x3(w) → ReLU → MaxPool2; then
    flatten → Dropout → [Dense(d) → ReLU → Dropout] per ``dense`` entry → Dense(C). No BN. The
    dense hidden layers carry Keras maxnorm (rows of the weight, see :func:`max_norm_`); the
    output layer does not. Convs are named conv1…conv6 and the dense layers fc1…fc3, so the depth
    study's "layer i" (i ≤ 6: conv i; 7, 8: fc1, fc2) maps onto names directly. PyTorch init.
    """
    channels, _, _ = _chw(in_shape)
    widths = _positive_ints("widths", widths)
    dense = _positive_ints("dense", dense, allow_empty=True)
    dropout = _probability("dropout", dropout)
    max_norm = _positive_float("max_norm", max_norm, allow_none=True)
    features: OrderedDict = OrderedDict()
    for s, w in enumerate(widths):
        a, b = 2 * s + 1, 2 * s + 2
        features[f"conv{a}"] = nn.Conv2d(channels, w, 3, padding=1)
        features[f"relu{a}"] = nn.ReLU()
        features[f"drop{a}"] = nn.Dropout(dropout)
        features[f"conv{b}"] = nn.Conv2d(w, w, 3, padding=1)
        features[f"relu{b}"] = nn.ReLU()
        features[f"pool{s + 1}"] = nn.MaxPool2d(2)
        channels = w
    features["flatten"] = nn.Flatten()
    flat = _flat_size(features, in_shape)
    head = _dense_layers(flat, dense, num_classes, dropout=dropout, tag="_fc")
    return Network(OrderedDict(features, **head), max_norm, [f"fc{i}" for i in range(1, len(dense) + 1)])


_VGG16_STAGES = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))


@register("vgg16")
def _vgg16(in_shape, num_classes, *, batch_norm=False, width=1.0, dropout=0.5):
    """CIFAR VGG16 as in dnn-mode-connectivity, the gRDA paper's model (papers.md §4.3), SAP init.

    13 Conv3x3 (padding 1, bias) [→ BN] → ReLU, MaxPool2 after each of the 5 stages; then
    flatten → Dropout → Linear(512) → ReLU → Dropout → Linear(512) → ReLU → Linear(C). The gRDA
    paper uses ``batch_norm=False``. Pools use ``ceil_mode=True``: identical on 32×32 (sizes stay
    even), and 28×28 or 8×8 inputs still reach a 1×1 map. ``width`` scales every conv and the
    512-wide classifier layers (tiny versions for tests). That code's conv init
    N(0, 2/(k²·out)) is exactly kaiming-normal fan_out, i.e. the SAP init.
    """
    channels, _, _ = _chw(in_shape)
    batch_norm = _flag("batch_norm", batch_norm)
    width = _positive_float("width", width)
    dropout = _probability("dropout", dropout)
    features: OrderedDict = OrderedDict()
    i = 0
    for s, stage in enumerate(_VGG16_STAGES, start=1):
        for c in stage:
            i += 1
            c = _scaled(c, width)
            features[f"conv{i}"] = nn.Conv2d(channels, c, 3, padding=1)
            if batch_norm:
                features[f"bn{i}"] = nn.BatchNorm2d(c)
            features[f"relu{i}"] = nn.ReLU()
            channels = c
        features[f"pool{s}"] = nn.MaxPool2d(2, ceil_mode=True)
    features["flatten"] = nn.Flatten()
    flat = _flat_size(features, in_shape)
    hidden = _scaled(512, width)
    head = OrderedDict(
        drop_fc0=nn.Dropout(dropout),
        fc1=nn.Linear(flat, hidden),
        relu_fc1=nn.ReLU(),
        drop_fc1=nn.Dropout(dropout),
        fc2=nn.Linear(hidden, hidden),
        relu_fc2=nn.ReLU(),
        fc3=nn.Linear(hidden, num_classes),
    )
    return _sap_init(Network(OrderedDict(features, **head)))


# --------------------------------------------------------------------------- residual networks


class PreActBlock(nn.Module):
    """Pre-activation basic block (He et al. 2016b), as the PQ Index code's ``resnet.Block``.

    out = conv2(relu(bn2(conv1(relu(bn1(x)))))) + shortcut, where the shortcut is ``x`` or, when
    the shape changes, a bias-free 1×1 conv of the pre-activated ``relu(bn1(x))``.
    """

    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.shortcut = (
            nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)
            if stride != 1 or in_planes != planes
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.relu1(self.bn1(x))
        skip = x if self.shortcut is None else self.shortcut(pre)
        return self.conv2(self.relu2(self.bn2(self.conv1(pre)))) + skip


class PreActResNet(nn.Module):
    """CIFAR-style pre-activation ResNet: 3×3 stem (no max-pool), four stages, BN-ReLU-GAP-Linear.

    Args:
        in_channels: input channels.
        num_classes: outputs.
        widths: channels of the four stages (the stem has ``widths[0]``).
        blocks: blocks per stage.
    """

    def __init__(self, in_channels: int, num_classes: int, widths, blocks):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        planes = widths[0]
        for i, (w, n) in enumerate(zip(widths, blocks), start=1):
            strides = [1 if i == 1 else 2] + [1] * (n - 1)
            stage = []
            for stride in strides:
                stage.append(PreActBlock(planes, w, stride))
                planes = w
            self.add_module(f"layer{i}", nn.Sequential(*stage))
        self.num_stages = len(widths)
        self.bn = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(planes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        for i in range(1, self.num_stages + 1):
            x = getattr(self, f"layer{i}")(x)
        return self.fc(self.flatten(self.avgpool(self.relu(self.bn(x)))))


@register("resnet18")
def _resnet18(in_shape, num_classes, *, width=1.0):
    """Pre-activation ResNet18, CIFAR stem (PQ Index paper, papers.md §2.5; code ``resnet.py``).

    Widths 64-128-256-512 × ``width``, blocks [2, 2, 2, 2], bias-free convs, final BN-ReLU before
    global average pooling; SAP init. 11,172,170 parameters at width 1 with 10 classes.
    """
    channels, _, _ = _chw(in_shape)
    width = _positive_float("width", width)
    widths = [_scaled(c, width) for c in (64, 128, 256, 512)]
    return _sap_init(PreActResNet(channels, num_classes, widths, (2, 2, 2, 2)))


class WideBlock(nn.Module):
    """Wide-ResNet basic block (Zagoruyko & Komodakis 2016), as the PQ Index code's ``wresnet``.

    out = conv2(dropout(relu(bn2(conv1(relu(bn1(x))))))) + shortcut; the stride is on conv1 and
    the shortcut, when the shape changes, is a bias-free 1×1 conv of the pre-activated input.
    """

    def __init__(self, in_planes: int, planes: int, stride: int, dropout: float):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU()
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.shortcut = (
            nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)
            if stride != 1 or in_planes != planes
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.relu1(self.bn1(x))
        skip = x if self.shortcut is None else self.shortcut(pre)
        out = self.dropout(self.relu2(self.bn2(self.conv1(pre))))
        return self.conv2(out) + skip


class WideResNet(nn.Module):
    """WRN-depth-k: 3×3 stem (16 channels), three stages of (depth−4)/6 wide blocks with
    16k, 32k, 64k channels and strides 1, 2, 2, then BN-ReLU-GAP-Linear.

    Args:
        in_channels: input channels.
        num_classes: outputs.
        depth: total depth, 6n + 4.
        widen_factor: k.
        dropout: dropout rate between the two convs of a block.
    """

    def __init__(self, in_channels: int, num_classes: int, depth: int, widen_factor: int, dropout: float):
        super().__init__()
        n = (depth - 4) // 6
        self.conv1 = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        planes = 16
        for i, (w, stride) in enumerate(zip((16, 32, 64), (1, 2, 2)), start=1):
            stage = []
            for j in range(n):
                stage.append(WideBlock(planes, w * widen_factor, stride if j == 0 else 1, dropout))
                planes = w * widen_factor
            self.add_module(f"layer{i}", nn.Sequential(*stage))
        self.bn = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(planes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.conv1(x))))
        return self.fc(self.flatten(self.avgpool(self.relu(self.bn(x)))))


@register("wrn")
def _wrn(in_shape, num_classes, *, depth=28, widen_factor=10, dropout=0.0):
    """Wide ResNet (gRDA: WRN-28-10, papers.md §4.3; PQ Index: WRN-28-8, §2.4), SAP init.

    Bias-free convs, dropout 0 by default. With 32×32 inputs the last stage is 8×8, so global
    average pooling equals the original ``avg_pool2d(8)``. ``depth`` must be 6n + 4 (10, 16, 22,
    28, …). 36,479,194 parameters for WRN-28-10 with 10 classes.
    """
    channels, _, _ = _chw(in_shape)
    depth = _positive_int("depth", depth)
    if depth < 10 or (depth - 4) % 6:
        raise ModelError(f"depth must be 6n + 4 with n ≥ 1 (10, 16, 22, 28, 40, …), got {depth}")
    widen_factor = _positive_int("widen_factor", widen_factor)
    dropout = _probability("dropout", dropout)
    return _sap_init(WideResNet(channels, num_classes, depth, widen_factor, dropout))


# ``prunelab.models.list()`` as the contract names it. It shadows the builtin for every function in
# this module (globals resolve at call time), so code here uses ``builtins.list`` or ``_SEQUENCE``.
list = list_models  # noqa: A001
