"""2:4-pruned ``nn.Linear`` layers on NVIDIA's sparse tensor cores (``torch.sparse.to_sparse_semi_structured``).

A weight with at most 2 non-zeros in every 4 consecutive inputs of a row (a mask from
``prunelab.prune(model, method, sparsity=0.5, pattern="2:4")``) can be stored compressed and
multiplied by the 2:4 kernels of cuSPARSELt or CUTLASS, on CUDA GPUs of compute capability 8.0 or
more (Ampere and later). :func:`to_semi_structured` converts every ``nn.Linear`` that qualifies and
leaves the others dense with the reason; :func:`semi_structured_reason` says why one layer does
not qualify. The kernels accept only some dtypes (float16 and bfloat16 everywhere, int8, float32
with CUTLASS) and shapes (both dimensions multiples of a backend block, e.g. 16 × 16 for float16
with cuSPARSELt); prunelab asks PyTorch's own tables, so the rules follow the installed version.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from prunelab.core.patterns import is_nm
from prunelab.errors import ConfigError

__all__ = ["semi_structured_reason", "to_semi_structured"]

_PATTERN = (2, 4)


def _backend():
    """The subclass ``to_sparse_semi_structured`` builds (CUTLASS when forced, else cuSPARSELt)."""
    from torch.sparse import SparseSemiStructuredTensor, SparseSemiStructuredTensorCUSPARSELT, \
        SparseSemiStructuredTensorCUTLASS

    cusparselt = getattr(getattr(torch.backends, "cusparselt", None), "is_available", lambda: False)()
    if SparseSemiStructuredTensor._FORCE_CUTLASS or not cusparselt:
        return SparseSemiStructuredTensorCUTLASS
    return SparseSemiStructuredTensorCUSPARSELT


def semi_structured_reason(module: nn.Module, parent: nn.Module | None = None) -> str | None:
    """Why ``module`` cannot run on 2:4 semi-structured kernels, or None when it can.

    Checked in this order: an ``nn.Linear`` whose parent calls it (``nn.MultiheadAttention``
    reads ``out_proj.weight`` itself), a weight with at most 2 non-zeros in every 4 consecutive
    inputs and ``d_in % 4 == 0``, CUDA available, the weight on a CUDA device of compute
    capability >= 8.0, a dtype and a shape the backend's kernels accept.

    Args:
        module: a layer of the model.
        parent: the module holding it, if known.

    Returns:
        A sentence saying what is wrong and what to do, or None.

    Example:
        >>> semi_structured_reason(nn.Linear(64, 64))
        'weight is not 2:4 sparse: ...'
    """
    if not isinstance(module, nn.Linear):
        return f"{type(module).__name__} is not an nn.Linear"
    if isinstance(parent, nn.MultiheadAttention):
        return "its parent nn.MultiheadAttention reads out_proj.weight directly"
    weight = module.weight.detach()
    if weight.shape[1] % _PATTERN[1] or not is_nm(weight != 0, _PATTERN, exact=False):
        return ("weight is not 2:4 sparse (some group of 4 consecutive inputs keeps more than 2 "
                "non-zeros, or d_in is not a multiple of 4); prune with pattern='2:4' first")
    if not torch.cuda.is_available():
        return "CUDA is not available: 2:4 kernels run on NVIDIA GPUs of compute capability 8.0 or more"
    if not weight.is_cuda:
        return f"weight is on {weight.device}; move the model to a CUDA device first (model.cuda())"
    capability = torch.cuda.get_device_capability(weight.device)
    if capability < (8, 0):
        return f"the GPU has compute capability {capability[0]}.{capability[1]}; 2:4 kernels need 8.0 or more"
    constraints = _backend()._DTYPE_SHAPE_CONSTRAINTS
    if weight.dtype not in constraints:
        return (f"weight dtype {weight.dtype} has no 2:4 kernel; use one of "
                f"{sorted(str(d) for d in constraints)} (e.g. model.half())")
    rule = constraints[weight.dtype]
    rows, cols = weight.shape
    if rows % rule.sparse_min_rows or cols % rule.sparse_min_cols:
        return (f"weight shape ({rows}, {cols}) is not a multiple of ({rule.sparse_min_rows}, "
                f"{rule.sparse_min_cols}), the smallest {weight.dtype} 2:4 block")
    return None


@torch.no_grad()
def to_semi_structured(model: nn.Module, *, inplace: bool = False) -> nn.Module:
    """A model whose 2:4-sparse ``nn.Linear`` layers hold ``to_sparse_semi_structured`` weights.

    Args:
        model: a pruned model on a CUDA device, in a dtype the kernels take (``model.half()``).
        inplace: convert ``model`` itself instead of a copy.

    Returns:
        The converted model; ``model.semi_structured_report`` is ``{"converted": [names],
        "left_dense": {name: reason}}`` (every ``nn.Linear`` appears in one of them).

    Raises:
        ConfigError: CUDA is not available (nothing could be converted).

    Example:
        >>> prunelab.prune(model, "sparsegpt", sparsity=0.5, pattern="2:4", calib=loader)
        >>> fast = to_semi_structured(model.half().cuda())
        >>> fast.semi_structured_report["converted"]
        ['fc1', 'fc2']
    """
    if not torch.cuda.is_available():
        raise ConfigError("to_semi_structured needs CUDA: 2:4 semi-structured kernels run on NVIDIA GPUs "
                          "of compute capability 8.0 or more; on the CPU use prunelab.export.to_sparse")
    from torch.sparse import to_sparse_semi_structured

    out = model if inplace else copy.deepcopy(model)
    report = {"converted": [], "left_dense": {}}
    parents = {id(child): module for module in out.modules() for child in module.children()}
    for name, module in out.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        reason = semi_structured_reason(module, parents.get(id(module)))
        if reason is not None:
            report["left_dense"][name] = reason
            continue
        module.weight = nn.Parameter(to_sparse_semi_structured(module.weight.detach().contiguous()),
                                     requires_grad=False)
        report["converted"].append(name)
    out.semi_structured_report = report
    return out
