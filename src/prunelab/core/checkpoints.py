"""Checkpoints: safetensors tensors + JSON metadata. Never pickle.

One file holds ``param/<name>`` and ``buffer/<name>`` tensors, ``mask/<name>`` bool masks (as
uint8), and in the safetensors header metadata under ``"prunelab"`` a JSON document with the model
config (``model.prunelab_config``: name, kwargs, input shape, classes), metrics and anything else.
Writes are atomic: a temp file beside the target, then ``os.replace``.

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


def rebuild_model(config: dict | None, path, build: ModelBuilder | None = None) -> nn.Module:
    """A fresh model built from a checkpoint's stored config.

    Args:
        config: the stored ``model.prunelab_config`` (None or empty when none was stored).
        path: the checkpoint, for messages.
        build: the builder; default the one set with :func:`set_model_builder`.

    Returns:
        The new model (freshly initialised weights).

    Raises:
        CheckpointError: no config stored, no builder, or the config does not build.
    """
    build = build or _model_builder
    if not config:
        raise CheckpointError(f"{path}: no model config stored; pass the model to load into")
    if build is None:
        raise CheckpointError(f"{path}: no model builder is set (import prunelab.models); pass the model to load into")
    try:
        return build(config)
    except (PrunelabError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{path}: cannot rebuild its model ({exc})") from None


def save_checkpoint(path, model: nn.Module, masks: Masks | None = None, metrics: dict | None = None,
                    extra: dict | None = None) -> Path:
    """Save ``model`` (parameters and buffers), ``masks`` and metadata to ``path``.

    Args:
        path: target file (conventionally ``*.safetensors``); parent directories are created.
        model: the network; ``model.prunelab_config`` (set by ``prunelab.models.create``) is
            stored so :func:`load_checkpoint` can rebuild it.
        masks: pruning masks to store beside the weights.
        metrics: JSON-able metrics.
        extra: any other JSON-able metadata.

    Returns:
        The path written.
    """
    from safetensors.torch import save_file

    path = Path(path)
    tensors = {}
    for name, p in model.named_parameters():
        tensors[f"param/{name}"] = p.detach().cpu().contiguous().clone()
    for name, b in model.named_buffers():
        tensors[f"buffer/{name}"] = b.detach().cpu().contiguous().clone()
    if masks is not None:
        masks.validate(model)
        for name, m in masks.items():
            tensors[f"mask/{name}"] = m.cpu().to(torch.uint8).contiguous()
    meta = {
        "format": "prunelab-checkpoint",
        "version": FORMAT_VERSION,
        "model": getattr(model, "prunelab_config", None),
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
        raise CheckpointError(f"{path}: damaged or not a safetensors {noun} ({exc})") from None
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


def load_checkpoint(path, model: nn.Module | None = None, build: ModelBuilder | None = None) -> Checkpoint:
    """Load a checkpoint written by :func:`save_checkpoint`.

    Args:
        path: the file.
        model: fill this model; when omitted the model is rebuilt from the stored config (see
            :func:`rebuild_model`).
        build: how to rebuild it; default the builder ``prunelab.models`` sets
            (``prunelab.models.from_config``).

    Returns:
        A :class:`Checkpoint`.

    Raises:
        CheckpointError: the file is missing or damaged, or does not fit ``model`` (names or
            shapes differ).
    """
    tensors, meta = read_checkpoint(path)
    if model is None:
        model = rebuild_model(meta.get("model"), path, build)
    params = {k[6:]: v for k, v in tensors.items() if k.startswith("param/")}
    buffers = {k[7:]: v for k, v in tensors.items() if k.startswith("buffer/")}
    masks = {k[5:]: v.to(torch.bool) for k, v in tensors.items() if k.startswith("mask/")}
    expected = dict(model.named_parameters())
    expected_buffers = dict(model.named_buffers())
    missing = sorted(set(expected) - set(params))
    unexpected = sorted(set(params) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: does not fit the model: "
            + (f"missing {', '.join(missing[:5])}" if missing else "")
            + ("; " if missing and unexpected else "")
            + (f"unexpected {', '.join(unexpected[:5])}" if unexpected else "")
        )
    for name, value in list(params.items()) + list(buffers.items()):
        target = expected.get(name, expected_buffers.get(name))
        if target is None:
            raise CheckpointError(f"{path}: buffer {name!r} is not in the model")
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
        mask_obj = Masks(masks)
        try:
            mask_obj.validate(model)
        except PrunelabError as exc:
            raise CheckpointError(f"{path}: {exc}") from None
    return Checkpoint(model=model, masks=mask_obj, meta=meta)
