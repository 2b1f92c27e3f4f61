"""Graph fusions for ``to_sparse`` where the layers are not siblings in an ``nn.Sequential``.

A ResNet block calls its layers from its own ``forward`` (``conv1 -> bn2 -> relu2``, then
``conv2(...) + skip``), so nothing there can be fused by looking at ``nn.Sequential`` children.
With ``torch.fx`` the copy's forward becomes a graph, and:

1. :func:`fold_batchnorm`: an eval-mode ``BatchNorm2d`` whose input is a ``Conv2d`` used nowhere
   else is folded into that convolution (``W' = W * gamma / sqrt(var + eps)`` per output channel,
   a new bias): one operation less, and zeros stay zeros, so the sparsity is unchanged.
2. :func:`fuse_into_sparse`, after conversion: a ReLU that is the only user of a native sparse
   layer is applied by the kernel; a residual add that is the only user of a native sparse
   convolution (without a fused ReLU) becomes ``conv(x, residual)``, computed in the same
   native call (:meth:`SparseConv2d.forward` with ``residual``); an eval-mode ``BatchNorm2d ->
   ReLU`` whose output only native sparse convolutions read (the pre-activation that opens a
   pre-activation ResNet block, read by ``conv1`` and the shortcut) becomes those convolutions'
   *prologue* (:meth:`SparseConv2d.set_prologue`), applied while the kernel packs its input.

The folded copy is a ``torch.fx.GraphModule`` with the model's module hierarchy (same layer
names) and its public attributes; it is used only when there is something to fold or fuse and
the model traces (``torch.fx.symbolic_trace``); otherwise the model is left as it was.
Folding changes rounding (float32), not the function: outputs agree with the unfolded model to
about 1e-6 relative. The folded copy is for inference: BatchNorm statistics no longer exist.
"""

from __future__ import annotations

import operator

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from prunelab.export.modules import SparseConv2d, SparseLinear

__all__ = ["fold_batchnorm", "fuse_into_sparse", "batchnorm_affine"]

_ADDS = (operator.add, torch.add)
_RELUS = (torch.relu, F.relu)


def _calls(graph: fx.Graph, target: str) -> int:
    return sum(1 for n in graph.nodes if n.op == "call_module" and n.target == target)


def _set_module(root: nn.Module, target: str, module: nn.Module) -> None:
    parent, _, attr = target.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, attr, module)


def _sole_user(node: fx.Node) -> fx.Node | None:
    return next(iter(node.users)) if len(node.users) == 1 else None


def _is_add(node: fx.Node) -> bool:
    return (node.op == "call_function" and node.target in _ADDS and len(node.args) == 2 and not node.kwargs) or (
        node.op == "call_method" and node.target == "add" and len(node.args) == 2 and not node.kwargs)


def _is_relu(node: fx.Node, modules: dict) -> bool:
    if node.op == "call_module":
        return type(modules.get(node.target)) is nn.ReLU
    if node.op == "call_function" and node.target in _RELUS:
        return len(node.args) == 1 and set(node.kwargs) <= {"inplace"}
    return node.op == "call_method" and node.target == "relu" and len(node.args) == 1 and not node.kwargs


def _residual_candidate(node: fx.Node, modules: dict) -> bool:
    user = _sole_user(node)
    return (node.op == "call_module" and isinstance(modules.get(node.target), nn.Conv2d) and user is not None
            and _is_add(user) and user.args.count(node) == 1)


def _prologue_candidate(node: fx.Node, modules: dict) -> bool:
    """An eval-mode BatchNorm2d whose only user is a ReLU that only convolutions read."""
    bn = modules.get(node.target) if node.op == "call_module" else None
    relu = _sole_user(node)
    return (type(bn) is nn.BatchNorm2d and not bn.training and bn.running_mean is not None and len(node.args) == 1
            and not node.kwargs and relu is not None and _is_relu(relu, modules) and bool(relu.users)
            and all(u.op == "call_module" and isinstance(modules.get(u.target), (nn.Conv2d, SparseConv2d))
                    and u.args[0] is relu and relu not in u.args[1:] and not u.kwargs for u in relu.users))


def batchnorm_affine(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scale, shift)`` with ``bn(x) == x * scale[c] + shift[c]`` in eval mode.

    Args:
        bn: an eval-mode BatchNorm2d with running statistics.

    Returns:
        Two float32 tensors of ``bn.num_features`` values.

    Example:
        >>> scale, shift = batchnorm_affine(block.bn1)
    """
    with torch.no_grad():
        scale = torch.rsqrt(bn.running_var.double() + bn.eps)
        if bn.weight is not None:
            scale = scale * bn.weight.double()
        shift = -bn.running_mean.double() * scale
        if bn.bias is not None:
            shift = shift + bn.bias.double()
    return scale.float(), shift.float()


def fold_batchnorm(model: nn.Module) -> tuple[nn.Module, list[str]]:
    """Trace ``model`` and fold each foldable ``Conv2d -> BatchNorm2d`` pair.

    Args:
        model: an eval-mode copy (changed: folded convolutions replace the originals in the
            returned graph module, which shares the other submodules).

    Returns:
        ``(module, folded)``: a ``GraphModule`` and the names of the folded BatchNorm layers when
        something was folded, a convolution feeds a residual add or a BatchNorm + ReLU feeds only
        convolutions (a prologue for :func:`fuse_into_sparse`); else ``(model, [])``.

    Example:
        >>> folded, names = fold_batchnorm(resnet.eval())
        >>> names[:2]
        ['layer1.0.bn2', 'layer1.1.bn2']
    """
    try:
        gm = fx.symbolic_trace(model)
    except Exception:   # noqa: BLE001 - any model fx cannot trace simply keeps its own forward
        return model, []
    modules = dict(gm.named_modules())
    folded = []
    for node in list(gm.graph.nodes):
        bn = modules.get(node.target) if node.op == "call_module" else None
        if type(bn) is not nn.BatchNorm2d or bn.training or bn.running_mean is None or not node.args:
            continue
        src = node.args[0]
        conv = modules.get(src.target) if isinstance(src, fx.Node) and src.op == "call_module" else None
        if (type(conv) is not nn.Conv2d or conv.training or len(src.users) != 1 or len(node.args) != 1
                or node.kwargs or _calls(gm.graph, src.target) != 1):
            continue
        _set_module(gm, src.target, fuse_conv_bn_eval(conv, bn))
        node.replace_all_uses_with(src)
        gm.graph.erase_node(node)
        folded.append(node.target)
    if not folded and not any(_residual_candidate(n, modules) or _prologue_candidate(n, modules)
                              for n in gm.graph.nodes):
        return model, []
    gm.graph.lint()
    gm.recompile()
    for key, value in vars(model).items():   # prunelab_config and other public attributes
        if not key.startswith("_") and key != "training" and not hasattr(gm, key):
            setattr(gm, key, value)
    return gm.eval(), folded


def fuse_into_sparse(gm: fx.GraphModule) -> dict[str, list[str]]:
    """Fuse the ReLU or residual add that alone follows a native sparse layer (see module doc).

    Args:
        gm: the graph module from :func:`fold_batchnorm`, after its layers were converted.

    Returns:
        ``{"relu": [layer names], "residual_add": [layer names], "dropout_removed": [dropout
        names], "prologue": [layer names]}`` (an eval-mode ``nn.Dropout`` is removed first).

    Example:
        >>> fuse_into_sparse(converted)["residual_add"][:1]
        ['layer1.0.conv2']
    """
    modules = dict(gm.named_modules())
    fused: dict[str, list[str]] = {"relu": [], "residual_add": [], "dropout_removed": []}
    for node in list(gm.graph.nodes):   # eval-mode dropout is the identity: it only separates layers
        dropout = modules.get(node.target) if node.op == "call_module" else None
        if type(dropout) is nn.Dropout and not dropout.training and len(node.args) == 1 and not node.kwargs:
            node.replace_all_uses_with(node.args[0])
            gm.graph.erase_node(node)
            fused["dropout_removed"].append(node.target)
    for node in list(gm.graph.nodes):
        layer = modules.get(node.target) if node.op == "call_module" else None
        user = _sole_user(node)
        if (not isinstance(layer, (SparseLinear, SparseConv2d)) or layer.backend != "native" or user is None
                or _calls(gm.graph, node.target) != 1 or len(node.args) != 1 or node.kwargs):
            continue
        if not layer.relu and _is_relu(user, modules):
            layer.relu = True
            layer._reset()   # descriptors built while deciding have the ReLU off
            user.replace_all_uses_with(node)
            gm.graph.erase_node(user)
            fused["relu"].append(node.target)
        elif isinstance(layer, SparseConv2d) and not layer.relu and _is_add(user) and user.args.count(node) == 1:
            other = user.args[1] if user.args[0] is node else user.args[0]
            if not isinstance(other, fx.Node):
                continue
            with gm.graph.inserting_before(user):
                call = gm.graph.call_module(node.target, args=(node.args[0], other))
            user.replace_all_uses_with(call)
            gm.graph.erase_node(user)
            gm.graph.erase_node(node)
            fused["residual_add"].append(node.target)
    fused["prologue"] = _fuse_prologues(gm, modules)
    gm.graph.lint()
    gm.recompile()
    return fused


def _fuse_prologues(gm: fx.GraphModule, modules: dict) -> list[str]:
    """``conv(relu(bn(x)))`` -> ``conv(x)`` with the BatchNorm + ReLU as the convolution's prologue,
    where every reader of that ReLU is a native sparse convolution called once (a pre-activation
    block's conv1 and shortcut): BN and ReLU then run while the kernel packs its input instead
    of as two PyTorch operations. Returns the names of the convolutions given a prologue."""
    names = []
    for node in list(gm.graph.nodes):
        if not _prologue_candidate(node, modules):
            continue
        relu = _sole_user(node)
        convs = [modules[u.target] for u in relu.users]
        if not all(isinstance(c, SparseConv2d) and c.backend == "native" and c.pro_scale is None
                   and _calls(gm.graph, u.target) == 1 for c, u in zip(convs, relu.users)):
            continue
        scale, shift = batchnorm_affine(modules[node.target])
        for conv, user in zip(convs, list(relu.users)):
            conv.set_prologue(scale, shift)
            names.append(user.target)
        relu.replace_all_uses_with(node.args[0])
        gm.graph.erase_node(relu)
        gm.graph.erase_node(node)
    return names
