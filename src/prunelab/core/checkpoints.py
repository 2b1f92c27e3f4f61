"""Checkpoints: safetensors tensors + JSON metadata. Never pickle.

One file holds ``param/<name>`` and ``buffer/<name>`` tensors, ``mask/<name>`` bool masks (as
uint8), and in the safetensors header metadata under ``"prunelab"`` a JSON document with the model
config (``model.prunelab_config``: name, kwargs, input shape, classes), metrics and anything else.
Writes are atomic: a temp file beside the target, then ``os.replace``.

Names are canonical (:mod:`prunelab.core.prunable`): those of the unwrapped model, so a checkpoint
saved from a ``torch.compile``'d or DDP-wrapped model loads into the plain model and back; a tied
parameter (GPT-2's output layer and token embedding) is stored once, under its first name
(safetensors refuses tensors that share memory, and one copy is all a load needs). Files written
with wrapper-prefixed names (``module.fc1.weight``) or both names of a tied weight still load.

Loading without a model rebuilds it from the stored config with the *model builder*: the core
knows nothing of the model zoo, so ``prunelab.models`` installs its ``from_config`` here when it is
imported (:func:`set_model_builder`); a caller may also pass its own ``build``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from prunelab.core.masks import Masks
from prunelab.core.prunable import canonical_name, parameter_aliases, strip_wrapper_prefixes, unwrap
from prunelab.errors import CheckpointError, PrunelabError
from prunelab.utils import atomic_path, plain_json

FORMAT_VERSION = 1

ModelBuilder = Callable[[dict], nn.Module]
_model_builder: ModelBuilder | None = None


@dataclass
class Checkpoint:
    """A loaded checkpoint: the model (rebuilt or filled), its masks (or None) and metadata."""

    model: nn.Module
    masks: Masks | None
    meta: dict


def set_model_builder(build: ModelBuilder | None) -> None:
    """Set how :func:`load_checkpoint` rebuilds a model from a stored config when given none.

    Args:
        build: ``build(config) -> nn.Module`` for a ``model.prunelab_config`` dict;
            ``prunelab.models`` installs ``prunelab.models.from_config`` when it is imported.
    """
    global _model_builder
    _model_builder = build


def rebuild_model(config: dict | None, path, build: ModelBuilder | None = None,
                  stored_numel: int | None = None) -> nn.Module:
    """A fresh model built from a checkpoint's stored config.

    Args:
        config: the stored ``model.prunelab_config`` (None or empty when none was stored).
        path: the checkpoint, for messages.
        build: the builder; default the one set with :func:`set_model_builder`.
        stored_numel: the number of parameter entries the file holds, when known: with the
            default builder, a config that asks for more is refused before any memory is
            allocated for it (a caller's own builder is called once, as given).

    Returns:
        The new model (freshly initialised weights).

    Raises:
        CheckpointError: no config stored, no builder, the config does not build, or it asks
            for more parameters than the file holds (a damaged file).
    """
    build = build or _model_builder
    if not config:
        raise CheckpointError(f"{path}: no model config stored; pass the model to load into")
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: its stored model config is {type(config).__name__}, not a table "
                              "(a damaged file); pass the model to load into")
    if build is None:
        raise CheckpointError(f"{path}: no model builder is set (import prunelab.models); pass the model to load into")
    if stored_numel is not None and build is _model_builder:
        needed = _parameter_count(config, build)
        if needed is not None and needed > stored_numel:
            raise CheckpointError(f"{path}: its stored model config asks for {needed} parameters but the file holds "
                                  f"{stored_numel} (a damaged file); pass the model to load into")
    try:
        return build(config)
    except (PrunelabError, KeyError, TypeError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: cannot rebuild its model ({reason})") from None


def _parameter_count(config: dict, build: ModelBuilder) -> int | None:
    """Parameter entries of the model ``config`` describes, counted on the meta device (no memory
    used, no random numbers drawn); None when it does not build there."""
    try:
        with torch.device("meta"):
            shell = build(config)
    except Exception:  # the real build reports the problem as a CheckpointError
        return None
    return sum(p.numel() for p in shell.parameters())


def save_checkpoint(path, model: nn.Module, masks: Masks | None = None, metrics: dict | None = None,
                    extra: dict | None = None) -> Path:
    """Save ``model`` (parameters and buffers), ``masks`` and metadata to ``path``.

    Args:
        path: target file (conventionally ``*.safetensors``); parent directories are created.
        model: the network, or its ``torch.compile``/DDP wrapper (the unwrapped model's names
            are written); ``model.prunelab_config`` (set by ``prunelab.models.create``) is
            stored so :func:`load_checkpoint` can rebuild it.
        masks: pruning masks to store beside the weights (stored under canonical names).
        metrics: JSON-able metrics.
        extra: any other JSON-able metadata.

    Returns:
        The path written.
    """
    from safetensors.torch import save_file

    path = Path(path)
    inner = unwrap(model)
    tensors = {}
    # named_parameters/named_buffers list a tied tensor once, under its first name.
    for name, p in inner.named_parameters():
        tensors[f"param/{name}"] = p.detach().cpu().contiguous().clone()
    for name, b in inner.named_buffers():
        tensors[f"buffer/{name}"] = b.detach().cpu().contiguous().clone()
    if masks is not None:
        for name, m in Masks(masks).canonical(model).items():
            tensors[f"mask/{name}"] = m.cpu().to(torch.uint8).contiguous()
    meta = {
        "format": "prunelab-checkpoint",
        "version": FORMAT_VERSION,
        "model": getattr(inner, "prunelab_config", None),
        "metrics": metrics or {},
        "extra": extra or {},
    }
    with atomic_path(path, mkdir=True) as tmp:
        save_file(tensors, str(tmp), metadata={"prunelab": json.dumps(plain_json(meta))})
    return path


def read_safetensors(path, noun: str = "checkpoint") -> tuple[dict[str, torch.Tensor], dict | None]:
    """Every tensor of a safetensors file and its ``"prunelab"`` metadata, parsed from JSON.

    Args:
        path: the file.
        noun: what the file is, for messages (``"no such checkpoint file"``).

    Returns:
        ``(tensors, metadata)``; metadata is None when the file has no ``"prunelab"`` entry.

    Raises:
        CheckpointError: the file is missing, is not safetensors, or its metadata is not JSON.
    """
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such {noun} file")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw_meta = (f.metadata() or {}).get("prunelab")
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        # One line: the library quotes the damaged header, which may hold anything.
        raise CheckpointError(f"{path}: damaged or not a safetensors {noun} ({' '.join(str(exc).split())})") from None
    if raw_meta is None:
        return tensors, None
    try:
        return tensors, json.loads(raw_meta)
    except json.JSONDecodeError:
        raise CheckpointError(f"{path}: its prunelab metadata is not valid JSON (damaged file)") from None


def read_checkpoint(path) -> tuple[dict[str, torch.Tensor], dict]:
    """The raw tensors and metadata of a checkpoint; :class:`CheckpointError` if unreadable."""
    tensors, meta = read_safetensors(path)
    if meta is None:
        raise CheckpointError(f"{path}: a safetensors file without prunelab metadata (not a prunelab checkpoint)")
    found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
    if found != "prunelab-checkpoint":
        raise CheckpointError(f"{path}: not a prunelab checkpoint (format {found!r})")
    return tensors, meta


def _canonical_tensors(path, stored: dict[str, torch.Tensor], aliases: dict[str, str], what: str
                       ) -> tuple[dict[str, torch.Tensor], list[str]]:
    """``stored`` keyed by canonical names (tied aliases and wrapper prefixes resolved), and the
    stored names that name nothing of the model."""
    out: dict[str, torch.Tensor] = {}
    unknown = []
    for name, value in stored.items():
        key = canonical_name(name, aliases)
        if key is None:
            unknown.append(name)
        elif key in out and not torch.equal(out[key], value):
            raise CheckpointError(f"{path}: holds two different values for the tied {what} {key!r} "
                                  f"(also stored as {name!r}); the file is inconsistent")
        else:
            out[key] = value
    return out, unknown


def buffer_aliases(model: nn.Module) -> dict[str, str]:
    """``every name -> canonical name`` of the (unwrapped) model's buffers, as
    :func:`prunelab.core.prunable.parameter_aliases` for parameters."""
    canonical: dict[int, str] = {}
    model = unwrap(model)
    return {name: canonical.setdefault(id(b), name)
            for name, b in model.named_buffers(remove_duplicate=False)}


def load_checkpoint(path, model: nn.Module | None = None, build: ModelBuilder | None = None) -> Checkpoint:
    """Load a checkpoint written by :func:`save_checkpoint`.

    Args:
        path: the file.
        model: fill this model (or its ``torch.compile``/DDP wrapper: a checkpoint saved from
            either fits both); when omitted the model is rebuilt from the stored config (see
            :func:`rebuild_model`).
        build: how to rebuild it; default the builder ``prunelab.models`` sets
            (``prunelab.models.from_config``).

    Returns:
        A :class:`Checkpoint`; its masks are keyed by the model's canonical parameter names.

    Raises:
        CheckpointError: the file is missing or damaged, or does not fit ``model`` (names or
            shapes differ).

    Example:
        >>> ckpt = load_checkpoint("pruned.safetensors", torch.compile(model))
        >>> ckpt.masks.apply(ckpt.model)
    """
    tensors, meta = read_checkpoint(path)
    if model is None:
        held = sum(t.numel() for k, t in tensors.items() if k.startswith("param/"))
        model = rebuild_model(meta.get("model"), path, build, stored_numel=held)
    inner = unwrap(model)
    stored_params = {k[6:]: v for k, v in tensors.items() if k.startswith("param/")}
    stored_buffers = {k[7:]: v for k, v in tensors.items() if k.startswith("buffer/")}
    masks = {k[5:]: v.to(torch.bool) for k, v in tensors.items() if k.startswith("mask/")}
    expected = dict(inner.named_parameters())
    expected_buffers = dict(inner.named_buffers())
    params, unexpected = _canonical_tensors(path, stored_params, parameter_aliases(inner), "parameter")
    missing = sorted(set(expected) - set(params))
    if missing or unexpected:
        unexpected = sorted(unexpected)
        raise CheckpointError(
            f"{path}: does not fit the model: "
            + (f"missing {', '.join(missing[:5])}" if missing else "")
            + ("; " if missing and unexpected else "")
            + (f"unexpected {', '.join(unexpected[:5])}" if unexpected else "")
        )
    buffers, unknown_buffers = _canonical_tensors(path, stored_buffers, buffer_aliases(inner), "buffer")
    if unknown_buffers:
        raise CheckpointError(f"{path}: buffer {strip_wrapper_prefixes(unknown_buffers[0])!r} is not in the model")
    for name, value in list(params.items()) + list(buffers.items()):
        target = expected.get(name, expected_buffers.get(name))
        if tuple(target.shape) != tuple(value.shape):
            raise CheckpointError(
                f"{path}: {name} has shape {tuple(value.shape)} in the file but {tuple(target.shape)} in the model"
            )
    with torch.no_grad():
        for name, value in params.items():
            expected[name].copy_(value)
        for name, value in buffers.items():
            expected_buffers[name].copy_(value)
    mask_obj = None
    if masks:
        try:
            mask_obj = Masks(masks).canonical(model)
        except PrunelabError as exc:
            raise CheckpointError(f"{path}: {exc}") from None
    return Checkpoint(model=model, masks=mask_obj, meta=meta)
