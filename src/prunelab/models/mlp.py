"""Fully connected models: ``linear``, ``mlp``, ``lenet-300-100`` and ``fc``."""

from __future__ import annotations

import math
from collections import OrderedDict

from torch import nn

from prunelab.models.factory import register
from prunelab.models.layers import Network, dense_layers, flatten_then, sap_init
from prunelab.models.options import positive_float, positive_ints, probability


@register("linear")
def _linear(in_shape, num_classes):
    """flatten → Linear(d_in, C); the PQ Index paper's "Linear" model (Diao et al. 2023), SAP init."""
    layers = OrderedDict(flatten=nn.Flatten(), fc=nn.Linear(math.prod(in_shape), num_classes))
    return sap_init(Network(layers))


@register("mlp")
def _mlp(in_shape, num_classes, *, hidden=(128, 256)):
    """ReLU MLP; default 784-128-256-C is the PQ Index paper's MLP (Diao et al. 2023), SAP init
    (biases 0).

    ``hidden=(512,)`` is the gRDA demo MLP 784-512-10 (Chao et al. 2020); Keras also zeroes biases.
    Layers are named fc1…fc(n+1).
    """
    hidden = positive_ints("hidden", hidden)
    return sap_init(Network(flatten_then(dense_layers(math.prod(in_shape), hidden, num_classes))))


@register("lenet-300-100")
def _lenet_300_100(in_shape, num_classes):
    """LeNet-300-100 (LeCun et al. 1998; the LTP experiment of Azarian et al. 2020): d_in-300-100-C, ReLU.

    PyTorch default init. 266,610 parameters for 1×28×28 and 10 classes.
    """
    return Network(flatten_then(dense_layers(math.prod(in_shape), (300, 100), num_classes)))


@register("fc")
def _fc(in_shape, num_classes, *, hidden=(100, 100), dropout=0.2, max_norm=3.0):
    """Pitas et al.'s FC network (Pitas et al. 2019, Fashion-MNIST; FeTa code ``train_fashion_mnist.py``).

    flatten → Dropout → [Linear → ReLU → Dropout] per hidden layer → Linear(C). The hidden layers'
    weights carry Keras ``maxnorm(3)`` (see :func:`~prunelab.models.layers.max_norm_`; applied by
    ``apply_constraint()``, which the training loop calls after each step); the output layer has
    no constraint, as in the authors' Keras code. ``max_norm=None`` disables it. MNIST used
    ``hidden=(60, 60)``. PyTorch default init (the Keras original uses Glorot-uniform weights and
    zero biases).
    """
    hidden = positive_ints("hidden", hidden)
    dropout = probability("dropout", dropout)
    max_norm = positive_float("max_norm", max_norm, allow_none=True)
    layers = flatten_then(dense_layers(math.prod(in_shape), hidden, num_classes, dropout=dropout))
    return Network(layers, max_norm, [f"fc{i}" for i in range(1, len(hidden) + 1)])
