"""Command-line options generated from dataclasses, and ``NAME=VALUE`` options.

A configuration dataclass (:class:`~prunelab.training.loop.TrainConfig`, ...) is the one place
that names its fields, types them, gives their defaults and documents them (the ``Attributes:``
section of its docstring). :func:`add_dataclass_options` turns it into argparse options and
:func:`dataclass_from_args` turns the parsed arguments back into an instance, so every command
that trains exposes every training field under the same name, with the same meaning and help.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import types
import typing
from typing import Any, Callable, Iterable, Mapping

from prunelab.cli import checks
from prunelab.errors import ConfigError
from prunelab.utils.docstrings import class_attribute_docs, field_defaults
from prunelab.utils.parsing import parse_assignment


def option_name(prefix: str, field: str) -> str:
    """``--{prefix}{field with dashes}``: ``("retrain-", "batch_size")`` → ``"--retrain-batch-size"``."""
    return f"--{prefix}{field}".replace("_", "-")


def _dest(prefix: str, field: str) -> str:
    return f"{prefix}{field}".replace("-", "_")


def _none_or(base: Callable[[str], Any]) -> Callable[[str], Any]:
    """An argparse type reading ``none`` as None and anything else with ``base``."""

    def convert(text: str):
        return None if text.strip().lower() == "none" else base(text)

    convert.__name__ = f"{base.__name__} (or none)"   # argparse names the type in its error message
    return convert


def _field_kwargs(annotation: Any, default: Any) -> dict:
    """``add_argument`` keywords (type, nargs, action) for a field of this annotation and default."""
    optional = False
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        optional = len(members) < len(typing.get_args(annotation))
        annotation = members[0] if len(members) == 1 else str
    if annotation is Any or annotation is None:
        annotation = type(default) if default is not None else str
    if annotation is bool:
        return {"action": argparse.BooleanOptionalAction}
    if typing.get_origin(annotation) in (tuple, list) or annotation in (tuple, list):
        items = typing.get_args(annotation)
        fixed = typing.get_origin(annotation) is tuple and items and items[-1] is not Ellipsis
        element = _checked(items[0] if items else str)
        return {"type": element, "nargs": len(items) if fixed else "+"}
    if annotation not in (int, float, str):
        raise TypeError(f"no command-line type for a field annotated {annotation!r}")
    return {"type": _none_or(_checked(annotation)) if optional else _checked(annotation)}


def _checked(annotation: Any) -> Any:
    """The argparse type of a field's annotation: a float must be finite (``float`` reads ``nan``)."""
    return checks.finite if annotation is float else annotation


def _appends_default() -> bool:
    """Whether this Python's BooleanOptionalAction writes the default into the help itself (3.10)."""
    return argparse.BooleanOptionalAction(["--x"], "x", default=False, help="").help != ""


def _help(doc: str, kwargs: dict) -> str:
    # argparse %-formats help strings; docstrings write literals as ``x``.
    text = re.sub(r":\w+:`~?([^`]+)`", r"\1", doc)   # Sphinx roles read as their target
    text = text.replace("``", "").replace("%", "%%").strip().rstrip(".")
    if kwargs.get("action") is argparse.BooleanOptionalAction and _appends_default():
        return text
    if getattr(kwargs.get("type"), "__name__", "").endswith("(or none)"):
        return f"{text} (default: %(default)s; 'none' for None)".strip()
    return f"{text} (default: %(default)s)".strip()


def add_dataclass_options(parser: argparse.ArgumentParser, cls: type, prefix: str = "",
                          defaults: Mapping[str, Any] | None = None, only: Iterable[str] | None = None,
                          skip: Iterable[str] = (), choices: Mapping[str, Iterable] | None = None,
                          title: str | None = None) -> None:
    """Add one option per field of the dataclass ``cls``: ``--{prefix}{field-with-dashes}``.

    The type comes from the field's annotation (int, float, str; ``X | None`` also reads ``none``;
    a bool becomes ``--x/--no-x``; a tuple takes several values), the help text from the field's
    entry in the ``Attributes:`` section of the class docstring, the default from the class.

    Args:
        parser: where to add them.
        cls: a dataclass.
        prefix: put before every option name (e.g. ``"retrain-"``); the destinations carry it too.
        defaults: this command's defaults, replacing the class's for the fields named.
        only: add these fields only (default: every field).
        skip: fields not to add (the command sets them otherwise).
        choices: allowed values per field, for fields whose class validates against a fixed set.
        title: put the options in an argument group of this title in ``--help``.

    Raises:
        TypeError: ``defaults``, ``only``, ``skip`` or ``choices`` name a field ``cls`` does not
            have, or a field's type has no command-line form.
    """
    fields = {f.name: f for f in dataclasses.fields(cls)}
    defaults, choices = dict(defaults or {}), dict(choices or {})
    wanted = list(fields) if only is None else list(only)
    unknown = (set(defaults) | set(wanted) | set(skip) | set(choices)) - set(fields)
    if unknown:
        raise TypeError(f"{cls.__name__} has no field(s) {', '.join(sorted(unknown))}")
    hints = typing.get_type_hints(cls)
    docs = class_attribute_docs(cls)
    class_defaults = field_defaults(cls)
    target = parser.add_argument_group(title) if title else parser
    for name in wanted:
        if name in skip:
            continue
        field = fields[name]
        default = defaults.get(name, class_defaults[name])
        if default is dataclasses.MISSING:
            raise TypeError(f"{cls.__name__}.{name} has no default; give one in defaults")
        kwargs = _field_kwargs(hints.get(name, Any), default)
        field_choices = choices.get(name, field.metadata.get("choices"))
        if field_choices is not None:
            kwargs["choices"] = tuple(field_choices)
        elif "action" not in kwargs:
            kwargs["metavar"] = name.upper()
        kwargs["help"] = _help(docs.get(name, ""), kwargs)
        target.add_argument(option_name(prefix, name), dest=_dest(prefix, name), default=default, **kwargs)


def dataclass_from_args(cls: type, args: argparse.Namespace, prefix: str = "", **fixed: Any):
    """The ``cls`` instance that the options of :func:`add_dataclass_options` describe.

    A field with no option under ``prefix`` keeps the class default unless ``fixed`` sets it.

    Args:
        cls: the dataclass the options were generated from.
        args: the parsed arguments.
        prefix: the prefix the options were added with.
        **fixed: field values set by the command (they win over the options).

    Returns:
        ``cls(**values)``; the class's own validation applies (a :class:`ConfigError` for
        ``TrainConfig``, which the command line prints as one line).
    """
    hints = typing.get_type_hints(cls)
    values = {}
    for field in dataclasses.fields(cls):
        dest = _dest(prefix, field.name)
        if field.name in fixed or not hasattr(args, dest):
            continue
        value = getattr(args, dest)
        if isinstance(value, list) and typing.get_origin(hints.get(field.name)) is tuple:
            value = tuple(value)
        values[field.name] = value
    try:
        return cls(**{**values, **fixed})
    except ConfigError as exc:   # say which option, not which field, was wrong
        raise checks.dataclass_error(cls, values, prefix, exc) from None


# -- training options ----------------------------------------------------------------------------

def add_train_options(parser: argparse.ArgumentParser, prefix: str = "", title: str | None = None,
                      only: Iterable[str] | None = None, **defaults: Any) -> None:
    """Every :class:`~prunelab.training.loop.TrainConfig` field as an option (``--epochs``, ``--lr``, ...).

    ``seed`` is not among them: the command's own ``--seed`` seeds the batch order too.

    Args:
        parser: where to add them.
        prefix: e.g. ``"retrain-"`` for a second training of the same command.
        title: the argument group's title in ``--help``.
        only: expose these fields only (for commands whose training ignores the others).
        **defaults: this command's defaults (e.g. ``epochs=10, optimizer="adam"``).
    """
    from prunelab.training.loop import OPTIMIZERS, SCHEDULES, TrainConfig

    add_dataclass_options(parser, TrainConfig, prefix, defaults, only=only, skip=("seed",),
                          choices={"optimizer": OPTIMIZERS, "schedule": SCHEDULES},
                          title=title or "training")


def train_config(args: argparse.Namespace, prefix: str = "", **fixed: Any):
    """The :class:`~prunelab.training.loop.TrainConfig` of the options :func:`add_train_options` added.

    Args:
        args: the parsed arguments (their ``seed``, when there is one, seeds the batch order).
        prefix: the prefix the options were added with.
        **fixed: fields the command sets itself.
    """
    from prunelab.training.loop import TrainConfig

    fixed.setdefault("seed", getattr(args, "seed", 0))
    return dataclass_from_args(TrainConfig, args, prefix, **fixed)


# -- NAME=VALUE options --------------------------------------------------------------------------

def assignment(option: str) -> Callable[[str], tuple[str, Any]]:
    """An argparse type reading ``NAME=VALUE`` (VALUE in JSON, else a string) for ``option``."""

    def convert(text: str) -> tuple[str, Any]:
        try:
            return parse_assignment(text, option)
        except ConfigError as exc:
            # argparse would replace a ValueError's message with "invalid value"
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = "NAME=VALUE"
    return convert


def add_assignment_option(parser: argparse.ArgumentParser, option: str, help_text: str) -> None:
    """A repeatable ``NAME=VALUE`` option (``--hparam``, ``--model-arg``); its value is a list of pairs."""
    parser.add_argument(option, type=assignment(option), action="append", metavar="NAME=VALUE", help=help_text)


def add_data_option(parser: argparse.ArgumentParser) -> None:
    """``--data-option NAME=VALUE`` (repeatable): an option of the data set's loader, e.g. ``context=64``.

    Read them back with :func:`data_options`.
    """
    add_assignment_option(parser, "--data-option",
                          "option of the data set's loader (JSON value), e.g. context=64 or max_bytes=500000 "
                          "for --dataset text; repeatable")


def data_options(args: argparse.Namespace) -> dict:
    """The ``--data-option`` pairs as the keyword arguments of :func:`prunelab.data.load` (a later name wins).

    Example:
        >>> data_options(argparse.Namespace(data_option=[("context", 64)]))
        {'context': 64}
    """
    return dict(getattr(args, "data_option", None) or [])


# -- the device a command computes on ------------------------------------------------------------

DEVICE_CHOICES = "auto, cpu, cuda, cuda:N or mps"
_DEVICE_PATTERN = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


def _device_name(text: str) -> str:
    """An argparse type: ``text`` lower-cased when it names a device kind, else a one-line error."""
    name = text.strip().lower()
    if not _DEVICE_PATTERN.fullmatch(name):
        raise argparse.ArgumentTypeError(f"unknown device {text!r}; choose {DEVICE_CHOICES}")
    return name


_device_name.__name__ = "device"


def add_device_option(parser: argparse.ArgumentParser, default: str = "auto", note: str = "") -> None:
    """``--device``: where the command computes (resolve it with :func:`command_device`).

    Args:
        parser: the command's parser.
        default: the command's default (``"auto"``: CUDA when available, else the CPU).
        note: a sentence added to the help text.
    """
    parser.add_argument("--device", default=default, type=_device_name, metavar="DEVICE",
                        help=f"where to compute: {DEVICE_CHOICES}; auto takes CUDA when available, else the CPU"
                             f"{'; ' + note if note else ''} (default: %(default)s)")
    parser.add_argument("--shard", action="store_true",
                        help="under torchrun, train with FSDP (parameters, gradients and optimizer state sharded "
                             "across ranks) instead of DistributedDataParallel; for models too large for one device")


def _no_cuda_reason() -> str:
    import torch

    if torch.version.cuda is None:
        return f"this torch build ({torch.__version__}) has no CUDA support"
    return "no GPU is visible (check the driver and CUDA_VISIBLE_DEVICES)"


def resolve_device(name: str = "auto"):
    """The :class:`torch.device` a ``--device`` value names, checked to be usable here.

    Args:
        name: ``"auto"`` (CUDA when available, else the CPU), ``"cpu"``, ``"cuda"``, ``"cuda:N"``
            or ``"mps"``.

    Returns:
        The device; ``"auto"`` and ``"cuda"`` give the current CUDA device with its index
        (e.g. ``cuda:0``).

    Raises:
        ConfigError: an unknown name, or a device this machine does not have (saying why and
            what to pass instead).

    Example:
        >>> resolve_device("cpu")
        device(type='cpu')
    """
    import torch

    text = str(name).strip().lower()
    if not _DEVICE_PATTERN.fullmatch(text):
        raise ConfigError(f"unknown device {name!r}; choose {DEVICE_CHOICES}")
    if text == "auto":
        text = "cuda" if torch.cuda.is_available() else "cpu"
    if text == "cpu":
        return torch.device("cpu")
    if text == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ConfigError("--device mps: Apple's MPS backend is not available on this machine; "
                              "use --device cpu (or auto)")
        return torch.device("mps")
    if not torch.cuda.is_available():
        raise ConfigError(f"--device {text}: CUDA is not available ({_no_cuda_reason()}); "
                          "use --device cpu, or auto to take a GPU only when there is one")
    count = torch.cuda.device_count()
    index = torch.cuda.current_device() if text == "cuda" else int(text.split(":")[1])
    if index >= count:
        raise ConfigError(f"--device {text}: this machine has {count} GPU(s), cuda:0 to cuda:{count - 1}")
    return torch.device("cuda", index)


def command_device(args: argparse.Namespace):
    """The device a command computes on: its ``--device`` resolved by :func:`resolve_device`.

    Under ``torchrun`` every rank keeps the device of the distributed setup (``cuda:LOCAL_RANK``
    under NCCL, the CPU under gloo): ``auto`` and a matching ``--device`` give it, any other
    device is an error, since ranks on different kinds of device cannot share a process group.

    Args:
        args: the parsed arguments (``args.device``; ``"auto"`` when the command has none).

    Returns:
        A :class:`torch.device`.

    Raises:
        ConfigError: an unknown or unavailable device, or one that contradicts the distributed setup.
    """
    from prunelab.training import distributed

    name = str(getattr(args, "device", "auto") or "auto").strip().lower()
    if not distributed.is_active():
        return resolve_device(name)
    own = distributed.device()
    if name in ("auto", own.type, str(own)):
        return own
    setup = ("NCCL: every rank computes on cuda:LOCAL_RANK" if own.type == "cuda" else
             "gloo: every rank computes on the CPU; GPUs need NCCL, PRUNELAB_DIST_BACKEND=nccl")
    raise ConfigError(f"--device {name} does not fit the distributed setup ({setup}; here {own}); "
                      "drop --device under torchrun")
