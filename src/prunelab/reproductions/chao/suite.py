"""The ``grda`` suites: directional pruning with gRDA against plain SGD (Chao et al., NeurIPS 2020).

``prunelab bench --suite grda`` runs on Fashion-MNIST, for the MLP 784-512-10 and LeNet-5:

* plain SGD (no momentum, no weight decay): method ``grda`` with ``c = 0``, which is
  ``torch.optim.SGD`` bit for bit (the paper's baseline);
* gRDA with μ ∈ {0.51, 0.55, 0.6, 0.7} at one c, the same learning rate, epochs and schedule
  (the lr factor of the authors' CIFAR runs: 1 for half the epochs, linear to 0.01 at 90 %);
  sparsity follows from (c, μ), so each gRDA run is one point of the sparsity–accuracy frontier
  (its ``target`` is 0 and unused);
* SGD followed by one-shot global magnitude pruning and retraining at equal total epochs: the
  dense model is plain SGD for ``epochs - retrain`` epochs, each target is pruned once and
  retrained ``retrain`` epochs with the mask fixed. The harness's budgets have no CIFAR schedule,
  so this baseline uses the cosine schedule in both phases (same lr, no momentum).

lr 0.05, c = 0.0035 and 40 epochs were chosen on the validation split (LeNet-5, μ = 0.7: 92.9 %
sparsity, 0.85 test points below SGD; ``docs/results/grda/README.md``). Cost: 270 epochs per
model, about 90 minutes of one free CPU core in all (LeNet-5 ~17 s per epoch, the MLP ~3 s).
``grda-short`` is the same grid at 2 epochs (magnitude: 1 + 1) and checks the pipeline: 18 runs
in about 5 minutes of one core (measured 293 s CPU).
"""

from __future__ import annotations

from prunelab.errors import ConfigError
from prunelab.harness.suites import Suite, grid, register_suite

#: time exponents μ of the grid, from the sweeps of Chao et al. 2020 (§4: ImageNet and CIFAR-10 runs).
MUS = (0.51, 0.55, 0.6, 0.7)

#: (model, model kwargs): the gRDA demo's MLP (one hidden layer of 512) and the Caffe LeNet-5.
MODELS = (("mlp", {"hidden": [512]}), ("lenet5", {}))

#: lr, threshold scale c, total epochs and retraining epochs of the baseline.
FULL = {"lr": 0.05, "c": 0.0035, "epochs": 40, "retrain": 10}
SHORT = {"lr": 0.05, "c": 0.01, "epochs": 2, "retrain": 1}

#: sparsities of the magnitude+retrain baseline: around the gRDA points.
MAGNITUDE_TARGETS = (0.5, 0.75, 0.9, 0.95)


def build(name: str, dataset: str | None, lr: float, c: float, epochs: int, retrain: int,
          models=MODELS, data_kwargs: dict | None = None, batch_size: int = 128) -> Suite:
    """The gRDA grid: SGD (c = 0), gRDA at every μ of :data:`MUS`, magnitude + retraining.

    Args:
        name: the suite's name.
        dataset: data set (default Fashion-MNIST).
        lr: learning rate of every phase (plain SGD, no momentum, no weight decay).
        c: threshold scale of the gRDA runs.
        epochs: epochs of the SGD and gRDA runs, and the total of the magnitude baseline.
        retrain: retraining epochs of the magnitude baseline (its dense model trains
            ``epochs - retrain``).
        models: model names or ``(name, kwargs)`` pairs (default :data:`MODELS`).
        data_kwargs: options of ``prunelab.data.load`` (default: the data set's defaults).
        batch_size: batch size of every phase.

    Returns:
        The :class:`~prunelab.harness.suites.Suite`.
    """
    dataset = dataset or "fashion-mnist"
    if not 0 < retrain < epochs:
        raise ConfigError(f"the gRDA suite needs 0 < retrain < epochs, got retrain={retrain}, epochs={epochs}")
    plain = {"optimizer": "sgd", "lr": lr, "momentum": 0.0, "batch_size": batch_size, "schedule": "cosine"}
    dense = {**plain, "epochs": epochs - retrain}
    retrain_budget = {**plain, "epochs": retrain}
    common = {"lr": lr, "epochs": epochs, "schedule": "cifar"}
    # gRDA's sparsity follows from (c, mu): the target is nominal (0, unused without search).
    entries = [("grda", {**common, "c": 0.0}, (0.0,))]
    entries += [("grda", {**common, "c": c, "mu": mu}, (0.0,)) for mu in MUS]
    entries += [("magnitude", {"scope": "global"}, MAGNITUDE_TARGETS)]
    specs = grid(dataset, list(models), entries, MAGNITUDE_TARGETS, (0,), dense, retrain_budget, data_kwargs)
    return Suite(
        name, tuple(specs),
        description=(f"{dataset}, {' and '.join(m if isinstance(m, str) else m[0] for m in models)}: plain SGD vs gRDA (c={c:g}, mu in "
                     f"{', '.join(f'{m:g}' for m in MUS)}), lr {lr:g}, {epochs} epochs, CIFAR schedule; "
                     f"global magnitude after {epochs - retrain} SGD epochs + {retrain} retraining epochs"),
        notes=("gRDA's target is nominal (0): its sparsity follows from (c, mu) and is in the sparsity column. The grda run with c=0 is the "
               "plain-SGD baseline (no momentum, no weight decay). The magnitude baseline uses the cosine "
               "schedule in both phases (the harness budgets have no CIFAR schedule)."),
    )


@register_suite("grda")
def grda(dataset: str | None = None) -> Suite:
    """gRDA vs SGD and magnitude + retraining at the chosen budget (see :data:`FULL`)."""
    return build("grda", dataset, **FULL)


@register_suite("grda-short")
def grda_short(dataset: str | None = None) -> Suite:
    """The ``grda`` grid at a few epochs: checks the pipeline in minutes (see :data:`SHORT`)."""
    return build("grda-short", dataset, **SHORT)
