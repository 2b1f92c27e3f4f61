"""Export and fast sparse inference: make pruning permanent, run it sparse, store it small, ship it as ONNX.

- :func:`make_permanent` bakes masks into the weights and removes every mask structure.
- :func:`to_sparse` returns a copy whose pruned Linear/Conv2d (and HuggingFace Conv1D) layers run
  on sparse kernels where that measures faster at the given batch size (:mod:`.modules`,
  :mod:`.native`); a layer its parent reads directly (``nn.MultiheadAttention``'s ``out_proj``)
  stays dense, with the reason in ``sparse_report["left_dense"]``. Runs of native sparse layers
  in an ``nn.Sequential`` execute in one native call (:class:`SparseSequential`); BatchNorm is
  folded, a following ReLU or residual add fused and a pre-activation BatchNorm + ReLU applied
  by the convolutions that read it, where the model traces with ``torch.fx``; there each run of
  native sparse convolutions (a ResNet's trunk) executes in one native call (:class:`SparseGraphRun`).
- :func:`save_sparse` / :func:`load_sparse` store a model as compressed sparse tensors in
  safetensors with JSON metadata; :func:`storage_sizes` compares with dense and gzip.
- :func:`export_onnx` writes the pruned model as ONNX; :func:`check_onnx` compares onnxruntime.
- :func:`to_semi_structured` puts 2:4-pruned Linear layers on CUDA's semi-structured sparse
  kernels (``torch.sparse.to_sparse_semi_structured``).

Example:
    >>> from prunelab.export import make_permanent, to_sparse, save_sparse
    >>> make_permanent(model, masks)
    >>> fast = to_sparse(model, batch_size=64)
    >>> fast.sparse_report["layers"][0]["choice"]
    'native'
    >>> save_sparse("model.sparse.safetensors", model)
"""

from prunelab.export.chain import SparseSequential
from prunelab.export.convert import sparse_layers, to_sparse
from prunelab.export.graph import SparseGraphRun
from prunelab.export.modules import SparseConv2d, SparseLinear
from prunelab.export.onnx_export import check_onnx, export_onnx, onnxruntime_session
from prunelab.export.permanent import make_permanent, plain_copy
from prunelab.export.semi_structured import semi_structured_reason, to_semi_structured
from prunelab.export.storage import load_sparse, save_sparse, storage_sizes
from prunelab.export.timing import interleaved

__all__ = [
    "make_permanent", "plain_copy", "to_sparse", "sparse_layers", "SparseLinear", "SparseConv2d", "SparseSequential",
    "SparseGraphRun",
    "save_sparse", "load_sparse", "storage_sizes", "export_onnx", "check_onnx", "onnxruntime_session",
    "interleaved", "to_semi_structured", "semi_structured_reason",
]
