"""Whole runs of native sparse layers in one native call: :class:`SparseSequential`.

At batch 1 a sparse layer's kernel takes a few microseconds to a few hundred, and calling it
from Python (module call, checks, output allocation, ``ctypes``) adds several microseconds per
layer. In an ``nn.Sequential`` whose consecutive children are native sparse layers, plus the
modules that are free between them (``nn.Identity`` left where a ReLU or max pool was fused,
``nn.Flatten`` of the non-batch dimensions, ``nn.Dropout`` in eval mode), the whole run is one
*chain*: a list of the layers' descriptors built once per input shape, handed to the kernel's
``pl_chain_forward``, which runs the layers in turn with its own intermediate buffers. One
``ctypes`` call per chain, whatever its length; the layers compute exactly what they compute
alone (same kernel, same order), so the output is bit-identical to calling them one by one.

Anything else (another module, training mode, an input needing autograd, not float32 on the
CPU, a shape the layers reject) runs module by module, as a plain ``nn.Sequential`` would.
"""

from __future__ import annotations

import torch
from torch import nn

from prunelab.export import native
from prunelab.export.modules import SparseConv2d, SparseLinear, _CSRLayer

__all__ = ["SparseSequential", "install_chains"]

_SPARSE = (SparseLinear, SparseConv2d)


def _free(module: nn.Module) -> bool:
    """A module that computes nothing between two sparse layers at inference."""
    if type(module) in (nn.Identity, nn.Dropout):
        return True
    return type(module) is nn.Flatten and module.start_dim == 1 and module.end_dim == -1


def _chainable(module: nn.Module) -> bool:
    return _free(module) or (isinstance(module, _SPARSE) and module.backend == "native")


def plan_is_current(plan: list, layers, generation_at: int) -> bool:
    """Whether a native plan's pointers are current: no layer dropped its descriptors since.

    ``plan[3]`` holds each layer's descriptors when the plan was built and ``plan[generation_at]``
    the layer generation it was last checked at (refreshed here when still current).
    """
    if plan[generation_at] == _CSRLayer.generation:
        return True
    if any(m._descriptors is not d for m, d in zip(layers, plan[3])):
        return False
    plan[generation_at] = _CSRLayer.generation
    return True


def _native_input(x) -> bool:
    """An input the native kernel may take: a float32 CPU batch that autograd does not follow."""
    return (isinstance(x, torch.Tensor) and x.dtype == torch.float32 and x.is_cpu and x.dim() >= 2
            and not (x.requires_grad and torch.is_grad_enabled()))


def _runs(children: list[nn.Module]) -> list[tuple[int, int]]:
    """(start, end) of each maximal run of chainable children holding at least two sparse layers."""
    runs, start = [], None
    for i, child in enumerate(children + [None]):
        if child is not None and _chainable(child):
            start = i if start is None else start
            continue
        if start is not None and sum(isinstance(c, _SPARSE) for c in children[start:i]) >= 2:
            runs.append((start, i))
        start = None
    return runs


class _Chain:
    """One run of children; its plans (per input sample shape) for ``pl_chain_forward``."""

    def __init__(self, modules: list[nn.Module]):
        self.modules = modules
        self.layers = [m for m in modules if isinstance(m, _SPARSE)]
        self.plans: dict[tuple, tuple] = {}

    def _plan(self, sample_shape: tuple):
        """(steps address, steps, descriptors, the layers' descriptor dicts, max elements, output
        shape, layer generation, batch-1 windows in) for one sample of ``sample_shape``, or None
        if some layer cannot take its input."""
        generation = _CSRLayer.generation
        shape, descriptors, largest = tuple(sample_shape), [], 0
        for module in self.modules:
            if isinstance(module, nn.Flatten):
                shape = (int(torch.Size(shape).numel()),)
            elif isinstance(module, _SPARSE):
                step = module.chain_step(shape)
                if step is None:
                    return None
                descriptors.append(step[0])
                shape = tuple(int(s) for s in step[1])
                largest = max(largest, int(torch.Size(shape).numel()))
        steps = torch.tensor([d.data_ptr() for d in descriptors], dtype=torch.int64)
        # [7]: whether the Linear layers' batch-1 window formats are in (built at the first batch-1 call)
        return [steps.data_ptr(), steps, descriptors, [m._descriptors for m in self.layers], largest, shape, generation,
                False]

    def _valid(self, plan) -> bool:
        return plan_is_current(plan, self.layers, 6)

    def run(self, x: torch.Tensor, lib) -> torch.Tensor | None:
        """The run's output for ``x``, or None to run it module by module."""
        key = x.shape[1:]
        plan = self.plans.get(key, ())
        if plan == () or (plan is not None and not self._valid(plan)):
            plan = self.plans[key] = self._plan(tuple(key))   # None too: a shape it cannot take
        if plan is None:
            return None
        if x.shape[0] == 1 and not plan[7]:
            for layer in self.layers:
                if isinstance(layer, SparseLinear):
                    layer._linear_descriptor(1)
            plan[7] = True
        x = x.contiguous()
        y = x.new_empty((x.shape[0], *plan[5]))
        threads = self.layers[0].threads or torch.get_num_threads()
        if lib.pl_chain_forward(plan[0], len(plan[2]), x.shape[0], x.data_ptr(), y.data_ptr(), threads, plan[4]):
            raise MemoryError("native sparse kernel: out of memory for its work buffers")
        return y


class SparseSequential(nn.Sequential):
    """An ``nn.Sequential`` whose runs of native sparse layers execute in one native call each.

    Same children under the same names as the ``nn.Sequential`` it replaces (same
    ``state_dict``), same output. :func:`install_chains` makes them in ``to_sparse``.

    Example:
        >>> fast = to_sparse(mlp, batch_size=1)
        >>> type(fast).__name__, fast.chains
        ('SparseSequential', [['fc1', 'fc2', 'fc3']])
    """

    @classmethod
    def from_sequential(cls, sequential: nn.Sequential) -> "SparseSequential":
        """A :class:`SparseSequential` with ``sequential``'s children, buffers and attributes
        (``sequential`` is left as it was)."""
        new = cls.__new__(cls)
        new.__dict__.update(sequential.__dict__)
        for attr in ("_modules", "_parameters", "_buffers"):
            setattr(new, attr, type(getattr(sequential, attr))(getattr(sequential, attr)))
        new.replaced_type = type(sequential).__name__
        new._reset_chains()
        return new

    def _reset_chains(self) -> None:
        self._children_seen: list = []
        self._segments: list = []

    def _apply(self, fn, *args, **kwargs):   # buffers moved: every plan's pointers are stale
        self._reset_chains()
        return super()._apply(fn, *args, **kwargs)

    def __getstate__(self):   # deepcopy / pickle: plans hold raw pointers
        state = self.__dict__.copy()
        state.update(_children_seen=[], _segments=[])
        return state

    @property
    def chains(self) -> list[list[str]]:
        """Names of the sparse layers of each chain, in order."""
        names = list(self._modules)
        return [[names[i] for i in range(a, b) if isinstance(self[i], _SPARSE)]
                for a, b in _runs(list(self._modules.values()))]

    def _plan_segments(self) -> list:
        children = list(self._modules.values())
        if children != self._children_seen:   # a child replaced since: cut the runs again
            segments, i = [], 0
            for a, b in _runs(children):
                segments += children[i:a] + [_Chain(children[a:b])]
                i = b
            self._segments, self._children_seen = segments + children[i:], children
        return self._segments

    def forward(self, x):
        lib = native.get()
        if self.training or lib is None:
            return super().forward(x)
        for item in self._plan_segments():
            if not isinstance(item, _Chain):
                x = item(x)
                continue
            y = item.run(x, lib) if _native_input(x) else None
            if y is None:
                for module in item.modules:
                    x = module(x)
            else:
                x = y
        return x

    def extra_repr(self) -> str:
        return f"replaces={getattr(self, 'replaced_type', 'Sequential')}, chains={self.chains}"


def install_chains(model: nn.Module) -> tuple[nn.Module, dict[str, list[str]]]:
    """Replace every plain ``nn.Sequential`` (``forward`` not overridden) of ``model`` that has
    a run of at least two native sparse layers by a :class:`SparseSequential`.

    Args:
        model: a converted model (``to_sparse``'s copy); changed in place.

    Returns:
        ``(model, chains)``: the model (a new root object when the root itself was replaced) and
        for each replaced Sequential (``""`` for the root) the names of its chained layers.

    Example:
        >>> model, chains = install_chains(sparse_copy)
        >>> chains
        {'': [['fc1', 'fc2', 'fc3']]}
    """
    found: dict[str, list[str]] = {}
    for name, module in list(model.named_modules()):
        if (not isinstance(module, nn.Sequential) or isinstance(module, SparseSequential)
                or type(module).forward is not nn.Sequential.forward or not _runs(list(module._modules.values()))):
            continue
        chained = SparseSequential.from_sequential(module)
        found[name] = chained.chains
        if not name:
            model = chained
            continue
        parent_name, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, attr, chained)
    return model, found
