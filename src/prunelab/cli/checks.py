"""Checks of command-line arguments: every kind of value is checked here, and before any work.

Two kinds of checks:

- *argparse types* (``type=count(1)``, ``type=number(0, 1, high_open=True)``, ``type=val_size``,
  ...) check one value while the command line is parsed; argparse turns their message into
  ``argument --OPTION: MESSAGE``, so the user learns which option was wrong;
- *checks after parsing*: files read (:func:`input_file`), files and directories written
  (:func:`output_file`, :func:`output_dir`), the options of a configuration dataclass
  (:func:`dataclass_error` names the option at fault) and a checkpoint against a data set
  (:func:`check_fits`). Each command calls them first, before it loads or trains anything.

Every failure is one :class:`~prunelab.errors.PrunelabError` that the command line prints as one
line (status 2), so a bad argument never costs a training run and never touches a saved file.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable

from prunelab.errors import CheckpointError, ConfigError

#: The largest seed every generator prunelab seeds accepts (torch takes 64 bits, numpy >= 0).
MAX_SEED = 2**63 - 1


# -- argparse types ------------------------------------------------------------------------------

def _named(convert: Callable[[str], Any], name: str) -> Callable[[str], Any]:
    convert.__name__ = name   # argparse names the type in some of its messages
    return convert


def _interval(low, high, low_open: bool, high_open: bool) -> str:
    """``in [0, 1)``, ``>= 1``, ``> 0``...: how a message states a range."""
    def shown(v):
        return str(v) if isinstance(v, int) else f"{v:g}"

    if low is not None and high is not None:
        return f"in {'(' if low_open else '['}{shown(low)}, {shown(high)}{')' if high_open else ']'}"
    if low is not None:
        return f"{'>' if low_open else '>='} {shown(low)}"
    return f"{'<' if high_open else '<='} {shown(high)}"


def count(minimum: int = 0, maximum: int | None = None) -> Callable[[str], int]:
    """An argparse type: a whole number in ``[minimum, maximum]``.

    Args:
        minimum: the smallest value allowed (0 for "none is fine", 1 for sizes and counts of runs).
        maximum: the largest value allowed (None: no bound).

    Returns:
        The converter; it raises :class:`argparse.ArgumentTypeError` with a one-line message.

    Example:
        >>> count(1)("3")
        3
    """
    wanted = f"a whole number {_interval(minimum, maximum, False, False)}"

    def convert(text: str) -> int:
        try:
            value = int(text.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}") from None
        if value < minimum or (maximum is not None and value > maximum):
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {value}")
        return value

    return _named(convert, "int")


def number(low: float | None = None, high: float | None = None, *, low_open: bool = False,
           high_open: bool = False, what: str = "a finite number") -> Callable[[str], float]:
    """An argparse type: a finite number, optionally within bounds.

    argparse's plain ``type=float`` takes ``nan`` and ``inf``; no prunelab option means anything
    by them, so they are refused here.

    Args:
        low, high: the bounds (None: unbounded on that side).
        low_open, high_open: exclude the bound itself.
        what: what the value is, for the message (``"a fraction"``).

    Returns:
        The converter; it raises :class:`argparse.ArgumentTypeError` with a one-line message.

    Example:
        >>> number(0, 1, high_open=True)("0.5")
        0.5
    """
    wanted = what + ("" if low is None and high is None else " " + _interval(low, high, low_open, high_open))

    def convert(text: str) -> float:
        try:
            value = float(text.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}") from None
        outside = not math.isfinite(value)
        if low is not None:
            outside |= value <= low if low_open else value < low
        if high is not None:
            outside |= value >= high if high_open else value > high
        if outside:
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {text.strip()}")
        return value

    return _named(convert, "float")


#: Any finite number (the type of every float option without a range of its own).
finite = number()
#: A fraction to prune, in [0, 1).
sparsity = number(0, 1, high_open=True, what="a fraction")


def pattern(text: str) -> str:
    """An argparse type: an N:M pattern such as ``2:4`` (returned as ``"N:M"``).

    Example:
        >>> pattern(" 2:4 ")
        '2:4'
    """
    from prunelab.core.patterns import parse_pattern, pattern_name
    from prunelab.errors import PrunelabError

    try:
        return pattern_name(parse_pattern(text))
    except PrunelabError:
        raise argparse.ArgumentTypeError(f"expected N:M with 1 <= N < M <= 256 (e.g. 2:4), got {text!r}") from None


pattern = _named(pattern, "pattern")
#: A seed: a whole number every generator accepts.
seed = count(0, MAX_SEED)


def val_size(text: str) -> int | float:
    """An argparse type for ``--val-size``: a sample count (a whole number >= 0) or a fraction in [0, 1).

    Example:
        >>> val_size("5000"), val_size("0.1")
        (5000, 0.1)
    """
    wanted = "a sample count (a whole number >= 0) or a fraction in [0, 1)"
    try:
        value = float(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}") from None
    if not math.isfinite(value) or value < 0 or (value >= 1 and not value.is_integer()):
        raise argparse.ArgumentTypeError(f"expected {wanted}, got {text.strip()}")
    return int(value) if value >= 1 else value


def existing_dir(text: str) -> str:
    """An argparse type for a directory that is read (``--data-dir``): it must exist.

    Example:
        >>> existing_dir(".")
        '.'
    """
    if not Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"{'not a directory' if Path(text).exists() else 'no such directory'}: {text!r}")
    return text


def onnx_opset(text: str) -> int:
    """An argparse type for ``--opset``: an opset PyTorch's TorchScript ONNX exporter writes.

    Without this check an opset the exporter does not know fails inside the export with a
    misleading hint about installing ``onnx``.

    Example:
        >>> onnx_opset("17")
        17
    """
    from torch.onnx import _constants

    low = _constants.ONNX_MIN_OPSET
    high = getattr(_constants, "ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET", _constants.ONNX_MAX_OPSET)
    try:
        return count(low, high)(text)
    except argparse.ArgumentTypeError as exc:
        raise argparse.ArgumentTypeError(f"{exc} (the ONNX opsets this torch's exporter writes)") from None


# -- files ---------------------------------------------------------------------------------------

def input_file(path, noun: str = "checkpoint") -> Path:
    """``path`` as an existing regular file to read.

    Args:
        path: what the user gave.
        noun: what the file is, for the message.

    Returns:
        The path.

    Raises:
        CheckpointError: (a checkpoint) or ConfigError (anything else): missing, or not a file.

    Example:
        >>> input_file(args.checkpoint)   # doctest: +SKIP
    """
    error = CheckpointError if "checkpoint" in noun else ConfigError
    p = Path(path)
    if not p.exists():
        raise error(f"{p}: no such {noun} file")
    if not p.is_file():
        raise error(f"{p} is {'a directory' if p.is_dir() else 'not a regular file'}, not a {noun} file")
    return p


def same_file(a, b) -> bool:
    """Whether two paths name the same file (links and relative spellings included)."""
    a, b = Path(a), Path(b)
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return a.resolve() == b.resolve()


def _writable(directory: Path, option: str, path) -> None:
    """Create and remove a file in ``directory``: the one test that holds for every file system.

    Under ``torchrun`` rank 0 alone writes, so it alone tries (its failure ends every rank).
    """
    from prunelab.training import distributed

    if not distributed.is_main():
        return
    try:
        fd, name = tempfile.mkstemp(dir=directory, prefix=".prunelab-write-check-")
        os.close(fd)
        os.unlink(name)
    except OSError as exc:
        raise ConfigError(f"{option} {path}: cannot write in {directory} ({exc.strerror or exc}); "
                          "choose a writable location") from None


def output_file(path, option: str = "--out", inputs: Iterable = (), outputs: Iterable = ()) -> Path:
    """``path`` checked as a file about to be written (atomically: a temporary file, then a rename).

    Args:
        path: what the user gave.
        option: the option that named it, for messages.
        inputs: files the command reads: the output must be none of them.
        outputs: other files the command writes: the output must be none of them either.

    Returns:
        The path.

    Raises:
        ConfigError: an empty name, a directory, a missing parent directory (it is not created),
            something that is not a regular file, one of ``inputs``, or a place that is not writable.

    Example:
        >>> output_file(args.out, inputs=[args.checkpoint])   # doctest: +SKIP
    """
    text = os.fspath(path)
    p = Path(text)
    if not text.strip():
        raise ConfigError(f"{option}: empty file name")
    if p.is_dir() or p.name in ("", ".", ".."):
        raise ConfigError(f"{option} {text} is a directory; name a file in it (e.g. {p / 'out.safetensors'})")
    parent = p.parent
    if not parent.exists():
        raise ConfigError(f"{option} {text}: directory {parent} does not exist; create it first")
    if not parent.is_dir():
        raise ConfigError(f"{option} {text}: {parent} is not a directory")
    if p.exists() and not p.is_file():
        raise ConfigError(f"{option} {text} exists and is not a regular file; refusing to replace it")
    for other in inputs:
        if other is not None and same_file(p, other):
            raise ConfigError(f"{option} {text} is also the input {other}; refusing to overwrite it, "
                              "choose another output file")
    for other in outputs:
        if other is not None and same_file(p, other):
            raise ConfigError(f"{option} {text} is also where another output goes ({other}); choose another file")
    _writable(parent, option, text)
    return p


def output_dir(path, option: str = "--out") -> Path:
    """``path`` checked as a directory of results the command creates (with its parents) and fills.

    Unlike a file's, a results directory's missing parents are created (``--out runs/lt`` on a
    fresh checkout), as long as the nearest existing one is a writable directory.

    Args:
        path: what the user gave (or the command's default).
        option: the option that named it, for messages.

    Returns:
        The path.

    Raises:
        ConfigError: an empty name, an existing file, a file where a parent should be, or no
            write permission.

    Example:
        >>> output_dir("runs/lt")   # doctest: +SKIP
    """
    text = os.fspath(path)
    p = Path(text)
    if not text.strip():
        raise ConfigError(f"{option}: empty directory name")
    if p.exists() and not p.is_dir():
        raise ConfigError(f"{option} {text} exists and is not a directory")
    existing = p
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"{option} {text}: {existing} is not a directory")
    _writable(existing, option, text)
    return p


# -- configuration dataclasses -------------------------------------------------------------------

def dataclass_error(cls: type, values: dict, prefix: str, error: Exception,
                    options: dict[str, str] | None = None) -> ConfigError:
    """The one-line error of options that ``cls`` refused, naming the option at fault.

    Args:
        cls: the configuration dataclass (its own ``__post_init__`` is the one place that states
            each field's range: this only finds which option broke it).
        values: the field values the options gave.
        prefix: the options' prefix (``"retrain-"``...).
        error: what ``cls(**values)`` raised.
        options: the option of a field whose name is not ``--{prefix}{field}``.

    Returns:
        A :class:`ConfigError` to raise: ``--OPTION VALUE: the class's message``.
    """
    prefix = prefix.replace("_", "-")
    for name, value in values.items():
        try:
            cls(**{name: value})
        except (ConfigError, TypeError, ValueError) as exc:
            option = (options or {}).get(name) or f"--{prefix}{name}".replace("_", "-")
            shown = " ".join(map(str, value)) if isinstance(value, (tuple, list)) else value
            return ConfigError(f"{option} {shown}: {exc}")
    # Only a combination is wrong (e.g. nesterov without momentum): the class's message names the fields.
    return ConfigError(f"{error}" + (f" (in the --{prefix}* options)" if prefix else ""))


def dataclass_options(cls: type, args: argparse.Namespace, names: Iterable[str], prefix: str = ""):
    """Check options generated from ``cls`` that the command hands on one by one (not as a ``cls``).

    Args:
        cls: the dataclass the options were generated from.
        args: the parsed arguments.
        names: the fields to check.
        prefix: the options' prefix.

    Returns:
        ``cls`` built from those options (and defaults for the rest).

    Raises:
        ConfigError: a value ``cls`` refuses, naming its option.

    Example:
        >>> dataclass_options(LTPHparams, args, ("temperature", "threshold_lr"))   # doctest: +SKIP
    """
    known = {f.name for f in dataclasses.fields(cls)}
    values = {n: getattr(args, f"{prefix}{n}".replace("-", "_")) for n in names if n in known}
    try:
        return cls(**values)
    except (ConfigError, TypeError) as exc:
        raise dataclass_error(cls, values, prefix, exc) from None


# -- a checkpoint and its data -------------------------------------------------------------------

def check_fits(meta: dict, data, path) -> None:
    """Refuse a data set whose samples or classes differ from what a checkpoint's model takes.

    Args:
        meta: the checkpoint's metadata (its ``"model"`` entry records ``in_shape`` and
            ``num_classes``; a checkpoint without them is not checked).
        data: the loaded :class:`~prunelab.data.Dataset`.
        path: the checkpoint, for the message.

    Raises:
        ConfigError: the input shapes or the class counts differ (one line naming both).

    Example:
        >>> check_fits(ckpt.meta, data, args.checkpoint)   # doctest: +SKIP
    """
    config = (meta or {}).get("model") or {}
    shape, classes = config.get("in_shape"), config.get("num_classes")
    data_shape, data_classes = tuple(data.in_shape), int(data.num_classes)
    if (shape is not None and tuple(shape) != data_shape) or (classes is not None and int(classes) != data_classes):
        raise ConfigError(
            f"{path} takes inputs of shape {tuple(shape) if shape is not None else '?'} in {classes} classes, but "
            f"{data.name} has inputs of shape {data_shape} in {data_classes} classes; pass the data set it was "
            f"trained on (--dataset {((meta or {}).get('extra') or {}).get('dataset') or 'NAME'})")
