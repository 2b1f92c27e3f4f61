"""ONNX export of a pruned model and checks against onnxruntime.

The exported graph is the dense pruned model (zeros in the weights): ONNX has no standard
sparse matmul that onnxruntime's CPU provider accelerates, so the file is for portability; the
benchmark reports its latency next to PyTorch dense and prunelab sparse. With
``sparse_initializers=True`` weights that are mostly zero are stored as ONNX
``SparseTensorProto`` (values + int64 flat indices) in ``graph.sparse_initializer``, which
onnxruntime densifies when it loads the model: a smaller file, the same outputs; runtimes
without sparse-initializer support need the default dense file.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from prunelab.errors import ConfigError
from prunelab.export.modules import SparseConv2d, SparseLinear
from prunelab.export.permanent import plain_copy
from prunelab.utils.io import atomic_path

__all__ = ["export_onnx", "onnxruntime_session", "check_onnx"]


def _sparsify_initializers(path: Path) -> int:
    """Move mostly-zero initializers to ``graph.sparse_initializer``; returns how many moved."""
    import onnx
    from onnx import helper, numpy_helper

    graph_model = onnx.load(str(path))
    graph = graph_model.graph
    moved = 0
    for init in list(graph.initializer):
        array = numpy_helper.to_array(init)
        nonzero = np.flatnonzero(array)
        if array.ndim < 2 or nonzero.size * (array.itemsize + 8) >= array.size * array.itemsize:
            continue
        values = numpy_helper.from_array(array.reshape(-1)[nonzero], init.name)
        indices = numpy_helper.from_array(nonzero.astype(np.int64), f"{init.name}_indices")
        graph.sparse_initializer.append(helper.make_sparse_tensor(values, indices, list(array.shape)))
        graph.initializer.remove(init)
        moved += 1
    onnx.checker.check_model(graph_model)
    onnx.save(graph_model, str(path))
    return moved


def export_onnx(model: nn.Module, path, input_shape=None, *, opset: int = 17, dynamic_batch: bool = True,
                sparse_initializers: bool = False) -> Path:
    """Export ``model`` (pruning made permanent in a copy) to ONNX with PyTorch's TorchScript exporter.

    Args:
        model: the pruned dense model (not a :func:`to_sparse` copy: its custom layers have no
            ONNX form).
        path: target ``.onnx`` file (written atomically).
        input_shape: shape of one input batch, e.g. ``(1, 1, 28, 28)``; default
            ``(1, *model.prunelab_config["in_shape"])``.
        opset: ONNX opset version.
        dynamic_batch: make the batch dimension symbolic (input ``input``, output ``output``).
        sparse_initializers: store mostly-zero weights as ONNX sparse initializers (smaller file;
            onnxruntime reads it, some other runtimes do not).

    Returns:
        The path written.

    Raises:
        ConfigError: no input shape known, a model with sparse modules, or the exporter fails.
    """
    if any(isinstance(m, (SparseLinear, SparseConv2d)) for m in model.modules()):
        raise ConfigError("export_onnx needs the dense pruned model, not the output of to_sparse")
    if input_shape is None:
        shape = (getattr(model, "prunelab_config", None) or {}).get("in_shape")
        if not shape:
            raise ConfigError("export_onnx needs input_shape=(batch, C, H, W) for a model without prunelab_config")
        input_shape = (1, *shape)
    plain = plain_copy(model).eval()
    example = torch.zeros(*[int(s) for s in input_shape])
    path = Path(path)
    axes = {"input": {0: "batch"}, "output": {0: "batch"}} if dynamic_batch else None
    try:
        with atomic_path(path, mkdir=True) as tmp:
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")
                torch.onnx.export(plain, (example,), str(tmp), input_names=["input"], output_names=["output"],
                                  dynamic_axes=axes, opset_version=opset, dynamo=False)
            if sparse_initializers:
                _sparsify_initializers(tmp)
    except (ImportError, RuntimeError, torch.onnx.errors.OnnxExporterError) as exc:
        raise ConfigError(f"ONNX export failed ({exc}); is the `onnx` package installed (pip install onnx)?") from None
    return path


def onnxruntime_session(path, threads: int | None = None, spinning: bool = True):
    """An onnxruntime CPU ``InferenceSession`` for ``path`` with ``threads`` intra-op threads.

    ``spinning=False`` stops its worker threads from busy-waiting for work after each run
    (onnxruntime's default): timed side by side with other engines in one process, spinning
    workers take cores from whatever runs next.

    Raises:
        ConfigError: onnxruntime is not installed.
    """
    try:
        import onnxruntime as ort
    except ImportError:
        raise ConfigError("onnxruntime is not installed: pip install onnxruntime (it is in prunelab's dev extras)") from None
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def check_onnx(model: nn.Module, path, inputs: torch.Tensor) -> float:
    """Largest absolute difference between ``model(inputs)`` and onnxruntime's output for ``path``."""
    session = onnxruntime_session(path)
    with torch.no_grad():
        expected = plain_copy(model).eval()(inputs).numpy()
    got = session.run(None, {"input": inputs.numpy()})[0]
    return float(np.abs(got - expected).max()) if expected.size else 0.0
