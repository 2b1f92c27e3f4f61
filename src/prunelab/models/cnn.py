"""Plain convolutional models: ``lenet5``, ``cnn``, ``conv6`` and ``vgg16``."""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from prunelab.errors import ModelError
from prunelab.models.factory import register
from prunelab.models.layers import Network, dense_layers, flat_size, sap_init
from prunelab.models.options import chw, flag, positive_float, positive_ints, probability, scaled


@register("lenet5")
def _lenet5(in_shape, num_classes, *, padding=None):
    """Caffe LeNet-5: Conv(20,5) → MaxPool2 → Conv(50,5) → MaxPool2 → FC500 → ReLU → FC C.

    A ReLU also follows each conv, as in the PyTorch MNIST example that the gRDA demo uses
    (Chao et al. 2020); Caffe's prototxt has none (the parameter count is the same: 431,080 for
    1×28×28, 10 classes). ``padding=None`` picks 0 when height and width are ≥ 16 (the original)
    and 2 ("same" for 5×5 kernels) for smaller inputs such as 8×8 digits; an int forces it.
    PyTorch default init.
    """
    channels, height, width = chw(in_shape)
    if padding is None:
        padding = 0 if min(height, width) >= 16 else 2
    elif isinstance(padding, bool) or not isinstance(padding, int) or padding < 0:
        raise ModelError(f"padding must be None (automatic) or an integer ≥ 0, got {padding!r}")
    features = OrderedDict(
        conv1=nn.Conv2d(channels, 20, 5, padding=padding),
        relu1=nn.ReLU(),
        pool1=nn.MaxPool2d(2),
        conv2=nn.Conv2d(20, 50, 5, padding=padding),
        relu2=nn.ReLU(),
        pool2=nn.MaxPool2d(2),
        flatten=nn.Flatten(),
    )
    flat = flat_size(features, in_shape)
    layers = OrderedDict(features, fc1=nn.Linear(flat, 500), relu3=nn.ReLU(), fc2=nn.Linear(500, num_classes))
    return Network(layers)


@register("cnn")
def _cnn(in_shape, num_classes, *, widths=(64, 128, 256, 512), batch_norm=True):
    """The PQ Index paper's CNN (Diao et al. 2023; code ``src/models/cnn.py``), SAP init.

    Per width w: Conv3x3(w, padding 1, with bias as in the code) → BN → ReLU → MaxPool2, the last
    block without pool; then AdaptiveAvgPool(1) → Linear(widths[-1], C). Narrow ``widths`` give
    small versions (e.g. the LTP batch-norm study on CPU). ``batch_norm=False`` drops the BN
    layers and nothing else (the LTP study's control: same convs, names and initialisation).
    """
    channels, _, _ = chw(in_shape)
    widths = positive_ints("widths", widths)
    batch_norm = flag("batch_norm", batch_norm)
    layers: OrderedDict = OrderedDict()
    for i, w in enumerate(widths, start=1):
        layers[f"conv{i}"] = nn.Conv2d(channels, w, 3, padding=1)
        if batch_norm:
            layers[f"bn{i}"] = nn.BatchNorm2d(w)
        layers[f"relu{i}"] = nn.ReLU()
        if i < len(widths):
            layers[f"pool{i}"] = nn.MaxPool2d(2)
        channels = w
    layers["avgpool"] = nn.AdaptiveAvgPool2d(1)
    layers["flatten"] = nn.Flatten()
    layers["fc"] = nn.Linear(channels, num_classes)
    return sap_init(Network(layers))


@register("conv6")
def _conv6(in_shape, num_classes, *, widths=(32, 64, 128), dense=(1024, 512), dropout=0.2, max_norm=3.0):
    """Pitas et al.'s CIFAR CNN (Pitas et al. 2019, CIFAR-10; code ``create_model_Cifar.py``).

    Per stage width w: Conv3x3(w, same) → ReLU → Dropout → Conv3x3(w) → ReLU → MaxPool2; then
    flatten → Dropout → [Dense(d) → ReLU → Dropout] per ``dense`` entry → Dense(C). No BN. The
    dense hidden layers carry Keras maxnorm (rows of the weight, see :func:`~prunelab.models.layers.max_norm_`); the
    output layer does not. Convs are named conv1…conv6 and the dense layers fc1…fc3, so the depth
    study's "layer i" (i ≤ 6: conv i; 7, 8: fc1, fc2) maps onto names directly. PyTorch init.
    """
    channels, _, _ = chw(in_shape)
    widths = positive_ints("widths", widths)
    dense = positive_ints("dense", dense, allow_empty=True)
    dropout = probability("dropout", dropout)
    max_norm = positive_float("max_norm", max_norm, allow_none=True)
    features: OrderedDict = OrderedDict()
    for s, w in enumerate(widths):
        a, b = 2 * s + 1, 2 * s + 2
        features[f"conv{a}"] = nn.Conv2d(channels, w, 3, padding=1)
        features[f"relu{a}"] = nn.ReLU()
        features[f"drop{a}"] = nn.Dropout(dropout)
        features[f"conv{b}"] = nn.Conv2d(w, w, 3, padding=1)
        features[f"relu{b}"] = nn.ReLU()
        features[f"pool{s + 1}"] = nn.MaxPool2d(2)
        channels = w
    features["flatten"] = nn.Flatten()
    flat = flat_size(features, in_shape)
    head = dense_layers(flat, dense, num_classes, dropout=dropout, tag="_fc")
    return Network(OrderedDict(features, **head), max_norm, [f"fc{i}" for i in range(1, len(dense) + 1)])


_VGG16_STAGES = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))


@register("vgg16")
def _vgg16(in_shape, num_classes, *, batch_norm=False, width=1.0, dropout=0.5):
    """CIFAR VGG16 as in dnn-mode-connectivity, the gRDA paper's model (Chao et al. 2020), SAP init.

    13 Conv3x3 (padding 1, bias) [→ BN] → ReLU, MaxPool2 after each of the 5 stages; then
    flatten → Dropout → Linear(512) → ReLU → Dropout → Linear(512) → ReLU → Linear(C). The gRDA
    paper uses ``batch_norm=False``. Pools use ``ceil_mode=True``: identical on 32×32 (sizes stay
    even), and 28×28 or 8×8 inputs still reach a 1×1 map. ``width`` scales every conv and the
    512-wide classifier layers (tiny versions for tests). That code's conv init
    N(0, 2/(k²·out)) is exactly kaiming-normal fan_out, i.e. the SAP init.
    """
    channels, _, _ = chw(in_shape)
    batch_norm = flag("batch_norm", batch_norm)
    width = positive_float("width", width)
    dropout = probability("dropout", dropout)
    features: OrderedDict = OrderedDict()
    i = 0
    for s, stage in enumerate(_VGG16_STAGES, start=1):
        for c in stage:
            i += 1
            c = scaled(c, width)
            features[f"conv{i}"] = nn.Conv2d(channels, c, 3, padding=1)
            if batch_norm:
                features[f"bn{i}"] = nn.BatchNorm2d(c)
            features[f"relu{i}"] = nn.ReLU()
            channels = c
        features[f"pool{s}"] = nn.MaxPool2d(2, ceil_mode=True)
    features["flatten"] = nn.Flatten()
    flat = flat_size(features, in_shape)
    hidden = scaled(512, width)
    head = OrderedDict(
        drop_fc0=nn.Dropout(dropout),
        fc1=nn.Linear(flat, hidden),
        relu_fc1=nn.ReLU(),
        drop_fc1=nn.Dropout(dropout),
        fc2=nn.Linear(hidden, hidden),
        relu_fc2=nn.ReLU(),
        fc3=nn.Linear(hidden, num_classes),
    )
    return sap_init(Network(OrderedDict(features, **head)))
