"""The model registry and :func:`create`: check the options, build, dry-run, record the config.

Every created model carries ``model.prunelab_config`` (``name``, ``kwargs`` with every default
filled in, ``in_shape``, ``num_classes``), a plain JSON-able dict in which sequences are lists;
``create(**model.prunelab_config)`` or :func:`from_config` rebuilds the same architecture.
"""

from __future__ import annotations

import difflib
import inspect
import json
import math
import operator
from typing import Any, Callable

import torch
from torch import nn

from prunelab.errors import ModelError
from prunelab.models.layers import dry_forward
from prunelab.utils import Registry, plain_json
from prunelab.utils.memory import check_fits, is_out_of_memory

Factory = Callable[..., nn.Module]

#: Model names → factories ``factory(in_shape, num_classes, *, option=default, ...)``; names
#: match case-insensitively.
registry: Registry[Factory] = Registry("model", ModelError, normalize=lambda name: name.strip().lower())


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
    def decorator(factory: Factory) -> Factory:
        params = [*inspect.signature(factory).parameters.values()]
        positional = [p for p in params if p.kind is not inspect.Parameter.KEYWORD_ONLY]
        options = [p for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY]
        if len(positional) != 2 or any(p.default is inspect.Parameter.empty for p in options):
            raise ModelError(
                f"model factory {factory.__name__!r} must have the signature "
                "(in_shape, num_classes, *, option=default, ...)"
            )
        return registry.register(name, factory)

    return decorator


def get(name: str) -> Factory:
    """The factory registered as ``name`` (case-insensitive).

    Raises:
        ModelError: unknown name (the message lists the known ones and the closest match).
    """
    return registry.get(_lookup(name))


def defaults(name: str) -> dict[str, Any]:
    """The options a model accepts, with their defaults (JSON form: sequences as lists).

    Args:
        name: a registered model name.

    Returns:
        ``{option: default}``; empty for models without options.

    Raises:
        ModelError: unknown name.
    """
    return {option: plain_json(default) for option, default in _accepted_options(get(name)).items()}


def create(name: str, in_shape, num_classes: int, **kwargs) -> nn.Module:
    """Build a registered model for inputs of shape ``in_shape`` and ``num_classes`` outputs.

    The model is checked with one forward pass of a zero input (eval mode, no grad, so neither
    the random number generator nor BN running statistics are touched): an input too small for
    the model's pooling stages fails here, not in the middle of training.

    Args:
        name: registered model name (see ``prunelab.models.registry.list()``), case-insensitive.
        in_shape: shape of one input sample, e.g. ``(1, 28, 28)``; convolutional models need
            ``(channels, height, width)``.
        num_classes: number of outputs (logits).
        **kwargs: the model's options (see :func:`defaults`). ``create(**model.prunelab_config)``
            is accepted too: a ``kwargs=`` dict is unpacked.

    Returns:
        The model in training mode, with ``model.prunelab_config`` set.

    Raises:
        ModelError: unknown name or option, a bad option value, an input shape the model
            cannot take, or a model that does not fit in the memory available.
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
    factory = registry.get(key)
    shape = _check_in_shape(key, in_shape)
    classes = _check_num_classes(key, num_classes)
    options = _resolve_options(key, factory, kwargs)
    _check_fits(key, factory, shape, classes, options)
    try:
        model = factory(shape, classes, **options)
    except ModelError as err:
        raise ModelError(f"model {key!r}: {err}") from err
    except (TypeError, ValueError, RuntimeError, MemoryError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__  # torch adds a C++ trace
        if is_out_of_memory(err):
            raise ModelError(f"model {key!r} with {plain_json(options)} does not fit in memory ({reason}); "
                             "use a smaller model (fewer or narrower layers)") from err
        raise ModelError(f"model {key!r} could not be built with {plain_json(options)}: {reason}") from err
    out = dry_forward(model, shape, f"model {key!r}")
    # Sequence models (a language model: (context,) in, logits per position out) end in classes too.
    expected = (1, classes) if len(shape) != 1 or tuple(out.shape) == (1, classes) else (1, shape[0], classes)
    if tuple(out.shape) != expected:  # a bug in a factory, not in the user's input
        raise ModelError(f"model {key!r} returned shape {tuple(out.shape)}, expected {expected}")
    model.prunelab_config = {
        "name": key,
        "kwargs": plain_json(options),
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
    if key not in registry:
        close = difflib.get_close_matches(str(key), registry.list(), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ModelError(
            f"unknown model {name!r}{hint}; known models: {', '.join(registry.list())}"
        )
    return key


def _accepted_options(factory: Factory) -> dict[str, Any]:
    """The factory's keyword-only options and their defaults, in signature order."""
    return {
        p.name: p.default
        for p in inspect.signature(factory).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    }


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


def _check_fits(key: str, factory: Factory, shape: tuple[int, ...], classes: int, options: dict) -> None:
    """ModelError when the model's tensors (and one input sample) would not fit in the memory
    available now. Measured on a build on the meta device, which takes no memory and draws no
    random numbers, before the real build allocates and initialises the weights: Linux grants a
    too-large allocation and kills the process when it is written."""
    if torch.get_default_device().type == "meta":
        return
    try:
        with torch.device("meta"):
            shell = factory(shape, classes, **options)
    except Exception:  # the real build raises the same problem, and reports it as a ModelError
        return
    needed = sum(t.numel() * t.element_size() for t in (*shell.parameters(), *shell.buffers()))
    check_fits(needed + 4 * math.prod(shape), f"model {key!r} with {plain_json(options)}", ModelError,
               "use a smaller model (fewer or narrower layers) or free some memory")


def _resolve_options(key: str, factory: Factory, kwargs: dict) -> dict[str, Any]:
    """Fill in defaults, reject unknown options, turn lists into tuples (one canonical form)."""
    accepted = _accepted_options(factory)
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        offer = ", ".join(f"{k}={plain_json(v)!r}" for k, v in accepted.items()) or "no options"
        raise ModelError(f"model {key!r} got unknown option(s) {', '.join(unknown)}; it accepts: {offer}")
    options = {k: _canonical(key, k, kwargs.get(k, default)) for k, default in accepted.items()}
    try:
        json.dumps(plain_json(options))
    except (TypeError, ValueError) as err:
        raise ModelError(
            f"model {key!r}: options must be JSON-able (numbers, strings, lists): {err}"
        ) from err
    return options


def _canonical(key: str, option: str, value):
    if isinstance(value, (list, tuple)):
        return tuple(_canonical(key, option, v) for v in value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise ModelError(
        f"model {key!r}: option {option} must be a number, string, bool, None or a sequence of "
        f"these, got {type(value).__name__}"
    )
