"""Model registry: ``create(name, in_shape, num_classes, **kwargs)`` over decorator-registered factories.

The models of the papers prunelab reproduces, built for any sensible input shape (flatten sizes
are computed from a dry forward pass, never hard-coded); ``registry.list()`` names them:

- ``linear`` (SAP init): flatten → Linear(d_in, C); the PQ Index paper (Diao et al. 2023).
- ``mlp`` (SAP init): Linear(d_in,128)-ReLU-Linear(128,256)-ReLU-Linear(256,C) (Diao et al. 2023);
  ``hidden=(512,)`` gives the gRDA demo MLP 784-512-10 (Chao et al. 2020).
- ``lenet-300-100`` (PyTorch init): d_in-300-100-C, ReLU (the LTP target, Azarian et al. 2020).
- ``fc`` (PyTorch init): Pitas et al. (2019) FC net, Drop-100-Drop-100-Drop-C, max-norm 3.
- ``lenet5`` (PyTorch init): Caffe LeNet-5, Conv20(5)-Pool-Conv50(5)-Pool-FC500-FC C (gRDA demo).
- ``cnn`` (SAP init): PQ Index CNN, 4 × [Conv3x3-BN-ReLU(-MaxPool)] → GAP → Linear.
- ``conv6`` (PyTorch init): Pitas et al. (2019) CIFAR CNN, 6 convs + Dense1024-512 with max-norm.
- ``vgg16`` (SAP init): CIFAR VGG16, classifier Dropout-512-Dropout-512-C (gRDA, Chao et al. 2020).
- ``resnet18`` (SAP init): pre-activation CIFAR ResNet18 (PQ Index paper).
- ``wrn`` (SAP init): wide ResNet, depth 28, widen factor 10 (gRDA; the PQ Index paper uses 28×8).
- ``mobilenetv2``, ``efficientnet-b0``, ``mixnet-s`` (SAP init): mobile networks of inverted
  residual blocks with depthwise (MixNet: mixed-kernel) convs, strides adapted to 28×28 / 32×32
  inputs, ``width`` and ``depth`` multipliers (:mod:`prunelab.models.mobile`).
- ``gpt`` (GPT-2 init): a small pre-LayerNorm decoder-only transformer language model for the
  ``text`` data set, ``in_shape=(context,)``, ``num_classes`` = vocabulary (:mod:`prunelab.models.gpt`).

"SAP" init is the PQ Index code's ``init_param``: conv weights kaiming-normal (fan_out, ReLU),
conv and Linear biases 0, Linear weights left at the PyTorch default, BN γ=1, β=0. "PyTorch"
means the layers' own default initialisation.

Every created model carries ``model.prunelab_config`` (``name``, ``kwargs`` with every default
filled in, ``in_shape``, ``num_classes``), a plain JSON-able dict in which sequences are lists;
``create(**model.prunelab_config)`` or :func:`from_config` rebuilds the same architecture.
Importing this package makes :func:`from_config` the builder with which
``prunelab.core.checkpoints.load_checkpoint`` rebuilds a model from a checkpoint.

ReLUs are separate, non-inplace ``nn.ReLU`` modules so that forward hooks on a layer (layer-wise
pruning captures activations this way) see that layer's output unchanged.

Example:
    >>> from prunelab import models
    >>> net = models.create("mlp", (1, 28, 28), 10, hidden=(512,))
    >>> net.prunelab_config
    {'name': 'mlp', 'kwargs': {'hidden': [512]}, 'in_shape': [1, 28, 28], 'num_classes': 10}
"""

from __future__ import annotations

from prunelab.core import checkpoints as _checkpoints
from prunelab.models.factory import create, defaults, from_config, get, register, registry
from prunelab.models.layers import Network, max_norm_
from prunelab.models import mlp as _mlp, cnn as _cnn, mobile as _mobile, gpt as _gpt  # noqa: F401  (register their models)
from prunelab.models.resnet import PreActResNet, WideResNet

_checkpoints.set_model_builder(from_config)

__all__ = [
    "registry",
    "register",
    "get",
    "create",
    "from_config",
    "defaults",
    "max_norm_",
    "Network",
    "PreActResNet",
    "WideResNet",
]
