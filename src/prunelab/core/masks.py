"""Masks: which weights of a model are kept.

A :class:`Masks` maps parameter names (canonical names, see :mod:`prunelab.core.prunable`: as
``named_parameters()`` lists them on the unwrapped model; wrapper prefixes and tied aliases also
resolve) to bool tensors of the parameter's shape; ``True`` means *kept*. Masks live apart from the model (as in OpenLTH, SAP and
Distiller): no hooks, no reparametrisation, so a masked model deep-copies, pickles and loads its
``state_dict`` like any other model. The training loop keeps sparsity fixed by re-applying the
masks after every optimizer step and zeroing optimizer state at pruned entries; in a user's own
loop :meth:`Masks.attach` does the same with one call.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch
from torch import nn

from prunelab.core.prunable import (  # noqa: F401  (re-exported: the mask model's vocabulary)
    PRUNABLE_TYPES, Coverage, PrunableRule, coverage, prunable_parameters, resolve_parameters,
)
from prunelab.errors import CheckpointError, MaskError
from prunelab.utils import atomic_path

class Masks(Mapping):
    """Parameter name -> bool tensor (``True`` = kept).

    Example:
        >>> masks = Masks.ones(model)
        >>> masks = prunelab.prune(model, "magnitude", sparsity=0.9)
        >>> masks.apply(model)          # zero pruned weights in place
        >>> print(masks.report())
    """

    def __init__(self, masks: Mapping[str, torch.Tensor]):
        self._masks: dict[str, torch.Tensor] = {}
        for name, mask in masks.items():
            if not isinstance(mask, torch.Tensor):
                raise MaskError(f"mask for {name!r} is {type(mask).__name__}, expected a torch.Tensor")
            self._masks[name] = mask.detach().to(torch.bool)
        self._cache: dict = {}

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def ones(cls, model: nn.Module, rule: PrunableRule | None = None, **prunable_kwargs) -> "Masks":
        """Masks that keep every prunable weight of ``model`` (see
        :func:`prunelab.core.prunable.prunable_parameters` for ``rule`` and the options)."""
        params = prunable_parameters(model, rule, **prunable_kwargs)
        return cls({n: torch.ones_like(p, dtype=torch.bool) for n, p in params.items()})

    @classmethod
    def from_nonzero(cls, model: nn.Module, rule: PrunableRule | None = None, **prunable_kwargs) -> "Masks":
        """Masks that keep exactly the non-zero prunable weights of ``model``."""
        params = prunable_parameters(model, rule, **prunable_kwargs)
        return cls({n: p.detach() != 0 for n, p in params.items()})

    # -- mapping protocol ---------------------------------------------------------------------
    def __getitem__(self, name: str) -> torch.Tensor:
        return self._masks[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._masks)

    def __len__(self) -> int:
        return len(self._masks)

    def __repr__(self) -> str:
        return f"Masks({len(self)} tensors, {self.kept()}/{self.total()} kept, sparsity {self.sparsity():.4f})"

    def __getstate__(self):
        return {"_masks": self._masks}

    def __setstate__(self, state):
        self._masks = state["_masks"]
        self._cache = {}

    # -- checks -------------------------------------------------------------------------------
    def validate(self, model: nn.Module) -> None:
        """Raise :class:`MaskError` unless every mask names a parameter of ``model`` (canonical,
        tied alias or wrapper-prefixed name) of its shape."""
        for name, param in resolve_parameters(model, self._masks).items():
            if tuple(param.shape) != tuple(self._masks[name].shape):
                raise MaskError(
                    f"mask {name!r} has shape {tuple(self._masks[name].shape)} but the parameter has "
                    f"{tuple(param.shape)}"
                )

    def _params(self, model: nn.Module) -> list[torch.Tensor]:
        # Resolved on every call: a model's parameters may be replaced between calls.
        return list(resolve_parameters(model, self._masks).values())

    def _float_masks(self, like: list[torch.Tensor]) -> list[torch.Tensor]:
        """The masks as tensors of the parameters' dtype and device, cached (a multiply is the
        cheapest way to zero entries, and converting every step would cost as much as it)."""
        key = tuple((t.dtype, t.device, type(t)) for t in like)
        cached = self._cache.get("float")
        if cached is None or cached[0] != key:
            cached = (key, [_like(m, t) for m, t in zip(self._masks.values(), like)])
            self._cache["float"] = cached
        return cached[1]

    # -- applying -----------------------------------------------------------------------------
    @torch.no_grad()
    def apply(self, model: nn.Module) -> nn.Module:
        """Zero the pruned entries of ``model``'s parameters in place; returns ``model``."""
        params = self._params(model)
        if params:
            try:
                torch._foreach_mul_(params, self._float_masks(params))
            except RuntimeError:
                self.validate(model)   # masks of another model: a MaskError naming the layer
                raise
        return model

    @torch.no_grad()
    def mask_grads(self, model: nn.Module) -> None:
        """Zero the gradients at pruned entries (so optimizer state never grows there)."""
        params = self._params(model)
        grads = [p.grad for p in params if p.grad is not None]
        if len(grads) == len(params) and grads:
            torch._foreach_mul_(grads, self._float_masks(grads))
        else:
            for p, m in zip(params, self._float_masks(params)):
                if p.grad is not None:
                    p.grad.mul_(m)

    @torch.no_grad()
    def mask_optimizer_state(self, optimizer: torch.optim.Optimizer, model: nn.Module) -> None:
        """Zero every per-parameter optimizer state tensor (momentum, Adam moments, ...) at
        pruned entries. State tensors of another shape (step counters) are left alone."""
        params = self._params(model)
        targets, masks = [], []
        for p, m in zip(params, self._float_masks(params)):
            state = optimizer.state.get(p)
            if not state:
                continue
            for value in state.values():
                if isinstance(value, torch.Tensor) and value.shape == p.shape and value.is_floating_point():
                    targets.append(value)
                    masks.append(m if value.dtype == m.dtype else m.to(value.dtype))
        if targets:
            torch._foreach_mul_(targets, masks)

    # -- counting -----------------------------------------------------------------------------
    def total(self) -> int:
        """Number of prunable weights covered by the masks."""
        return sum(m.numel() for m in self._masks.values())

    def kept(self) -> int:
        """Number of weights kept."""
        return sum(int(m.sum()) for m in self._masks.values())

    def pruned(self) -> int:
        """Number of weights pruned."""
        return self.total() - self.kept()

    def sparsity(self) -> float:
        """Fraction of the covered weights that are pruned (0 when the masks cover nothing)."""
        total = self.total()
        return self.pruned() / total if total else 0.0

    def density(self) -> float:
        """Fraction of the covered weights that are kept."""
        return 1.0 - self.sparsity()

    def per_layer(self) -> dict[str, dict]:
        """``name -> {"kept", "total", "sparsity"}`` for every mask."""
        out = {}
        for name, m in self._masks.items():
            kept, total = int(m.sum()), m.numel()
            out[name] = {"kept": kept, "total": total, "sparsity": 1 - kept / total if total else 0.0}
        return out

    def coverage(self, model: nn.Module) -> Coverage:
        """What fraction of ``model``'s weight-matrix entries these masks cover, and which weight
        matrices they leave dense (:class:`prunelab.core.prunable.Coverage`)."""
        return coverage(model, self._masks)

    def report(self, model: nn.Module | None = None) -> str:
        """A plain-text table of kept/total weights and sparsity per layer and in total; with
        ``model``, a last line says what fraction of all its weight-matrix entries the masks cover
        and lists every weight matrix left dense."""
        rows = [(n, d["kept"], d["total"], d["sparsity"]) for n, d in self.per_layer().items()]
        rows.append(("total (prunable weights)", self.kept(), self.total(), self.sparsity()))
        width = max(len(r[0]) for r in rows)
        lines = [f"{'parameter':<{width}}  {'kept':>10}  {'total':>10}  {'sparsity':>8}"]
        for name, kept, total, sp in rows:
            lines.append(f"{name:<{width}}  {kept:>10}  {total:>10}  {sp:>8.2%}")
        if model is not None:
            lines.append(f"coverage: {self.coverage(model).line()}")
        return "\n".join(lines)

    def canonical(self, model: nn.Module) -> "Masks":
        """The same masks keyed by ``model``'s canonical parameter names (wrapper prefixes such as
        ``_orig_mod.`` or ``module.`` and tied aliases resolved); for masks read from a wrapped
        model's names."""
        from prunelab.core.prunable import canonical_name, parameter_aliases

        aliases = parameter_aliases(model)
        self.validate(model)
        return Masks({canonical_name(n, aliases): m for n, m in self._masks.items()})

    def attach(self, optimizer: torch.optim.Optimizer, model: nn.Module) -> "MaskHandle":
        """Keep these masks exact through every ``optimizer.step()`` of a user's own loop.

        Applies the masks now, then registers two optimizer hooks: before each step the
        gradients at pruned entries are zeroed (so weight decay and momentum never grow there);
        after it the masks are re-applied and every per-parameter optimizer state tensor
        (momentum, Adam moments) is zeroed at pruned entries. Works for any optimizer and any LR
        scheduler; the hooks hold the masks and the model, nothing of the masks holds them.

        Args:
            optimizer: the optimizer that updates ``model``'s parameters.
            model: the model (or its ``torch.compile``/DDP wrapper).

        Returns:
            A :class:`MaskHandle`; ``handle.remove()`` detaches the hooks.

        Example:
            >>> masks = prunelab.prune(model, "magnitude", sparsity=0.9)
            >>> handle = masks.attach(optimizer, model)
            >>> for x, y in loader:          # the user's loop, unchanged
            ...     loss = F.cross_entropy(model(x), y); loss.backward()
            ...     optimizer.step(); optimizer.zero_grad(); scheduler.step()
        """
        self.validate(model)
        self.apply(model)
        self.mask_optimizer_state(optimizer, model)

        def before(_optimizer, _args, _kwargs):
            self.mask_grads(model)

        def after(_optimizer, _args, _kwargs):
            self.apply(model)
            self.mask_optimizer_state(optimizer, model)

        return MaskHandle([optimizer.register_step_pre_hook(before), optimizer.register_step_post_hook(after)])

    @torch.no_grad()
    def update_(self, other: Mapping[str, torch.Tensor]) -> "Masks":
        """Overwrite these masks in place with ``other``'s (same names and shapes), e.g. when a
        schedule prunes more during training; returns ``self``."""
        if set(other) != set(self._masks):
            raise MaskError("update_ needs masks with the same parameter names")
        for name, mask in self._masks.items():
            if tuple(other[name].shape) != tuple(mask.shape):
                raise MaskError(f"update_: mask {name!r} changes shape")
            mask.copy_(other[name].to(torch.bool))
        self._cache = {}  # the float copies used by the training loop are stale now
        return self

    # -- algebra ------------------------------------------------------------------------------
    def intersect(self, other: Mapping[str, torch.Tensor]) -> "Masks":
        """Keep a weight only where both masks keep it (names missing from ``other`` keep self)."""
        return Masks({n: m & other[n].to(torch.bool) if n in other else m for n, m in self._masks.items()})

    __and__ = intersect

    def clone(self) -> "Masks":
        """An independent copy."""
        return Masks({n: m.clone() for n, m in self._masks.items()})

    def equal(self, other: Mapping[str, torch.Tensor]) -> bool:
        """True when both have the same names and identical tensors."""
        return set(self) == set(other) and all(torch.equal(self[n], other[n].to(torch.bool)) for n in self)

    def to(self, device) -> "Masks":
        """The masks on ``device``."""
        return Masks({n: m.to(device) for n, m in self._masks.items()})

    # -- persistence --------------------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        """``name -> bool tensor`` (copies)."""
        return {n: m.clone() for n, m in self._masks.items()}

    @classmethod
    def from_state_dict(cls, state: Mapping[str, torch.Tensor]) -> "Masks":
        """Inverse of :meth:`state_dict`."""
        return cls(state)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the masks to a safetensors file (atomically: temp file, then rename)."""
        from safetensors.torch import save_file

        path = Path(path)
        tensors = {n: m.to(torch.uint8).contiguous() for n, m in self._masks.items()}
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata={"prunelab": json.dumps({"kind": "masks", "version": 1})})
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Masks":
        """Read masks written by :meth:`save` (or the masks inside a prunelab checkpoint)."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"{path}: no such file")
        try:
            tensors = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"{path}: not a readable safetensors file ({' '.join(str(exc).split())})") from None
        if any(n.startswith("mask/") for n in tensors):
            tensors = {n[5:]: t for n, t in tensors.items() if n.startswith("mask/")}
        return cls({n: t.to(torch.bool) for n, t in tensors.items()})

    # -- torch.nn.utils.prune interop ---------------------------------------------------------
    def to_nn_prune(self, model: nn.Module) -> nn.Module:
        """Attach the masks with ``torch.nn.utils.prune.custom_from_mask`` (adds ``weight_orig``,
        ``weight_mask`` and the forward pre-hook), for code that expects that API."""
        from torch.nn.utils import prune as nn_prune

        from prunelab.core.prunable import unwrap

        masks = self.canonical(model)
        modules = dict(unwrap(model).named_modules())
        for name, mask in masks.items():
            module_name, _, attr = name.rpartition(".")
            nn_prune.custom_from_mask(modules[module_name], attr, mask.to(torch.float32))
        return model

    @classmethod
    def from_nn_prune(cls, model: nn.Module, remove: bool = False) -> "Masks":
        """Read the ``<name>_mask`` buffers that ``torch.nn.utils.prune`` attached.

        Args:
            model: a model pruned with ``torch.nn.utils.prune``.
            remove: also call ``prune.remove`` so the model holds plain (zeroed) parameters.

        Returns:
            Masks keyed by the plain parameter names (``fc1.weight``).
        """
        from torch.nn.utils import prune as nn_prune

        masks = {}
        for module_name, module in model.named_modules():
            for buffer_name, buffer in list(module.named_buffers(recurse=False)):
                if buffer_name.endswith("_mask"):
                    attr = buffer_name[: -len("_mask")]
                    key = f"{module_name}.{attr}" if module_name else attr
                    masks[key] = buffer.detach().to(torch.bool).clone()
                    if remove:
                        nn_prune.remove(module, attr)
        if not masks:
            raise MaskError("the model has no torch.nn.utils.prune masks (no '*_mask' buffers)")
        return cls(masks)


def _like(mask: torch.Tensor, tensor: torch.Tensor) -> torch.Tensor:
    """``mask`` as ``tensor``'s dtype and device; for a sharded ``DTensor`` (FSDP) this rank's
    piece of it, sharded the same way (cut locally: no communication)."""
    if type(tensor).__name__ == "DTensor":
        from torch.distributed.tensor import distribute_tensor

        local = mask.to(device=tensor.device, dtype=tensor.dtype)
        return distribute_tensor(local, tensor.device_mesh, tensor.placements, src_data_rank=None)
    return mask.to(device=tensor.device, dtype=tensor.dtype)


class MaskHandle:
    """The hooks :meth:`Masks.attach` registered; :meth:`remove` detaches them."""

    def __init__(self, handles: list):
        self._handles = handles

    def remove(self) -> None:
        """Detach the hooks (the masks stop being enforced; the weights keep their zeros)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __enter__(self) -> "MaskHandle":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()
