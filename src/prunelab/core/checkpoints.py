"""Checkpoints: safetensors tensors + JSON metadata. Never pickle.

One file holds ``param/<name>`` and ``buffer/<name>`` tensors, ``mask/<name>`` bool masks (as
uint8), and in the safetensors header metadata under ``"prunelab"`` a JSON document with the model
config (``model.prunelab_config``: name, kwargs, input shape, classes), metrics and anything else.
Writes are atomic: a temp file beside the target, then ``os.replace``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from prunelab.errors import CheckpointError, PrunelabError
from prunelab.core.masks import Masks

FORMAT_VERSION = 1


@dataclass
class Checkpoint:
    """A loaded checkpoint: the model (rebuilt or filled), its masks (or None) and metadata."""

    model: nn.Module
    masks: Masks | None
    meta: dict


def _jsonable(obj):
    return json.loads(json.dumps(obj, default=lambda o: o.item() if hasattr(o, "item") else str(o)))


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
    path.parent.mkdir(parents=True, exist_ok=True)
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
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        save_file(tensors, str(tmp), metadata={"prunelab": json.dumps(_jsonable(meta))})
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def read_checkpoint(path) -> tuple[dict[str, torch.Tensor], dict]:
    """The raw tensors and metadata of a checkpoint; :class:`CheckpointError` if unreadable."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw_meta = (f.metadata() or {}).get("prunelab")
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: damaged or not a safetensors checkpoint ({exc})") from None
    if raw_meta is None:
        raise CheckpointError(f"{path}: a safetensors file without prunelab metadata (not a prunelab checkpoint)")
    try:
        meta = json.loads(raw_meta)
    except json.JSONDecodeError:
        raise CheckpointError(f"{path}: its prunelab metadata is not valid JSON (damaged file)") from None
    if meta.get("format") != "prunelab-checkpoint":
        raise CheckpointError(f"{path}: not a prunelab checkpoint (format {meta.get('format')!r})")
    return tensors, meta


def load_checkpoint(path, model: nn.Module | None = None) -> Checkpoint:
    """Load a checkpoint written by :func:`save_checkpoint`.

    Args:
        path: the file.
        model: fill this model; when omitted the model is rebuilt from the stored config with
            ``prunelab.models.create``.

    Returns:
        A :class:`Checkpoint`.

    Raises:
        CheckpointError: the file is missing or damaged, or does not fit ``model`` (names or
            shapes differ).
    """
    tensors, meta = read_checkpoint(path)
    if model is None:
        cfg = meta.get("model")
        if not cfg:
            raise CheckpointError(f"{path}: no model config stored; pass the model to load into")
        from prunelab import models

        try:
            model = models.create(cfg["name"], tuple(cfg["in_shape"]), cfg["num_classes"], **cfg.get("kwargs", {}))
        except PrunelabError as exc:
            raise CheckpointError(f"{path}: cannot rebuild its model ({exc})") from None
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
