"""Runs of native sparse convolutions in a ``torch.fx`` graph executed in one native call.

After :func:`prunelab.export.fusion.fuse_into_sparse`, a pre-activation ResNet's trunk is a
sequence of native :class:`SparseConv2d` calls only (BatchNorm folded or applied as a prologue,
ReLU and residual adds fused): ``h = conv1(x); y = conv2(h, x)``, or with a shortcut
``h = conv1(x); t = conv2(h); y = shortcut(x, t)``. At batch 1 each call from Python costs
several microseconds besides its kernel. :func:`install_graph_runs` replaces each maximal run of
such calls that reads one tensor from outside and whose values (but the last) are read only
inside the run by one :class:`SparseGraphRun` module: one ``pl_graph_forward`` call executes the
same layers in the same order with the same kernels (bit-identical outputs), its intermediates
in work buffers reused once dead.

Anything else (training mode, an input autograd follows, not float32 on the CPU, a shape a layer
rejects) runs the layers one by one from Python, as the graph did.
"""

from __future__ import annotations

import torch
from torch import fx, nn

from prunelab.export import native
from prunelab.export.chain import _native_input, plan_is_current
from prunelab.export.modules import SparseConv2d, _CSRLayer

__all__ = ["SparseGraphRun", "install_graph_runs"]

_MAX_BUFFERS = 64   # work buffers pl_graph_forward accepts


class SparseGraphRun(nn.Module):
    """Native sparse convolutions called in order, each reading the run's input or an earlier
    step's output (and optionally adding a residual), as one native call.

    Args:
        layers: the :class:`SparseConv2d` layers, in call order (the modules stay registered
            where they are in the model; this module only refers to them).
        names: their names in the model (for the report).
        steps: per layer ``(input, residual)``: ``0`` for the run's input, ``i + 1`` for step
            ``i``'s output; residual ``None`` for none.

    Example:
        >>> run = SparseGraphRun([conv1, conv2], ["b.conv1", "b.conv2"], [(0, None), (1, 0)])
        >>> y = run(x)   # conv2(conv1(x)) + x in one call
    """

    def __init__(self, layers: list[SparseConv2d], names: list[str], steps: list[tuple[int, int | None]]):
        super().__init__()
        # a plain tuple, not submodules: the layers keep their names (and state_dict keys)
        self.__dict__["layers"] = tuple(layers)
        self.names, self.steps = list(names), [tuple(s) for s in steps]
        self._plans: dict = {}

    def __getstate__(self):   # deepcopy / pickle: plans hold raw pointers
        state = self.__dict__.copy()
        state["_plans"] = {}
        return state

    def _plan(self, sample_shape: tuple):
        """(program address, program, descriptors, layers' descriptor dicts, buffer sizes
        address, sizes, output shape, generation), or None if a layer cannot take its input."""
        generation = _CSRLayer.generation
        shapes, descriptors = [tuple(sample_shape)], []
        for layer, (src, res) in zip(self.layers, self.steps):
            step = layer.chain_step(shapes[src])
            if step is None:
                return None
            out = tuple(int(s) for s in step[1])
            if res is not None and shapes[res] != out:
                return None
            descriptors.append(step[0])
            shapes.append(out)
        # work buffers by liveness: step i's output lives until its last reader
        last = {i + 1: i for i in range(len(self.steps))}
        for i, (src, res) in enumerate(self.steps):
            for v in (src, res):
                if v:
                    last[v] = max(last[v], i)
        slot, sizes, free = {0: 0}, [], []
        for i, (src, res) in enumerate(self.steps):
            value, elems = i + 1, int(torch.Size(shapes[i + 1]).numel())
            if i == len(self.steps) - 1:
                slot[value] = 1
            else:
                if not free:
                    free.append(len(sizes))
                    sizes.append(0)
                buf = free.pop()
                sizes[buf] = max(sizes[buf], elems)
                slot[value] = 2 + buf
            for v in {src, res} - {None, 0}:
                if last[v] == i:
                    free.append(slot[v] - 2)
        if len(sizes) > _MAX_BUFFERS:
            return None
        program = torch.tensor([[d.data_ptr(), slot[src], -1 if res is None else slot[res], slot[i + 1]]
                                for i, (d, (src, res)) in enumerate(zip(descriptors, self.steps))], dtype=torch.int64)
        elems = torch.tensor(sizes or [0], dtype=torch.int64)
        return [program.data_ptr(), program, descriptors, [m._descriptors for m in self.layers], elems.data_ptr(),
                elems, len(sizes), shapes[-1], generation]

    def _valid(self, plan) -> bool:
        return plan_is_current(plan, self.layers, 8)

    def _python(self, x: torch.Tensor) -> torch.Tensor:
        values = [x]
        for layer, (src, res) in zip(self.layers, self.steps):
            values.append(layer(values[src]) if res is None else layer(values[src], values[res]))
        return values[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lib = native.get()
        if self.training or lib is None or not _native_input(x) or x.dim() != 4:
            return self._python(x)
        key = x.shape[1:]
        plan = self._plans.get(key, ())
        if plan == () or (plan is not None and not self._valid(plan)):
            plan = self._plans[key] = self._plan(tuple(key))
        if plan is None:
            return self._python(x)
        x = x.contiguous()
        y = x.new_empty((x.shape[0], *plan[7]))
        threads = self.layers[0].threads or torch.get_num_threads()
        if lib.pl_graph_forward(plan[0], len(self.steps), x.shape[0], x.data_ptr(), y.data_ptr(), threads,
                                plan[6], plan[4]):
            raise MemoryError("native sparse kernel: out of memory for its work buffers")
        return y

    def extra_repr(self) -> str:
        return f"layers={self.names}"


def _member(node: fx.Node, modules: dict, graph: fx.Graph) -> bool:
    """A call of a native sparse convolution (called once) on one input and an optional residual."""
    layer = modules.get(node.target) if node.op == "call_module" else None
    return (isinstance(layer, SparseConv2d) and layer.backend == "native" and not node.kwargs
            and 1 <= len(node.args) <= 2 and all(isinstance(a, fx.Node) for a in node.args)
            and sum(1 for n in graph.nodes if n.op == "call_module" and n.target == node.target) == 1)


def _valid_prefix(run: list[fx.Node]) -> int:
    """Length of the longest prefix (of at least 2) whose values but the last are read only
    inside it; 0 if none."""
    for k in range(len(run), 1, -1):
        inside = set(run[:k])
        if all(set(n.users) <= inside for n in run[:k - 1]):
            return k
    return 0


def install_graph_runs(gm: fx.GraphModule) -> dict[str, list[str]]:
    """Replace each run of native sparse convolutions in ``gm`` by a :class:`SparseGraphRun`.

    Args:
        gm: the converted graph module (after :func:`~prunelab.export.fusion.fuse_into_sparse`);
            changed in place: the run modules are added as ``sparse_run_<i>``.

    Returns:
        ``{run module name: [layer names]}``.

    Example:
        >>> install_graph_runs(converted)["sparse_run_0"][:2]
        ['layer1.0.conv1', 'layer1.0.conv2']
    """
    modules = dict(gm.named_modules())
    runs, run, source = [], [], None
    for node in list(gm.graph.nodes):
        if not _member(node, modules, gm.graph):
            continue
        inside = set(run)
        if run and all(a is source or a in inside for a in node.args):
            run.append(node)
            continue
        runs.append(run)
        run, source = ([node], node.args[0]) if all(a is node.args[0] for a in node.args) else ([], None)
    runs.append(run)
    found = {}
    for run in runs:
        run = run[:_valid_prefix(run)]
        if not run:
            continue
        source = run[0].args[0]
        index = {n: i + 1 for i, n in enumerate(run)}
        steps = [(index.get(n.args[0], 0), None if len(n.args) == 1 else index.get(n.args[1], 0)) for n in run]
        name, suffix = f"sparse_run_{len(found)}", 0
        while hasattr(gm, name):   # a model attribute of that name stays untouched
            suffix += 1
            name = f"sparse_run_{len(found)}_{suffix}"
        module = SparseGraphRun([modules[n.target] for n in run], [n.target for n in run], steps)
        gm.add_module(name, module.train(gm.training))
        with gm.graph.inserting_after(run[-1]):
            call = gm.graph.call_module(name, args=(source,))
        run[-1].replace_all_uses_with(call)
        for n in reversed(run):
            gm.graph.erase_node(n)
        found[name] = [n.target for n in run]
    if found:
        gm.graph.lint()
        gm.recompile()
    return found
