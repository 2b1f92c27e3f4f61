"""Directional pruning with gRDA (Chao et al., NeurIPS 2020, arXiv:2006.09358).

The network is trained once, from its seeded initialisation, with :class:`prunelab.methods.grda.optim.GRDA`
instead of SGD; the soft threshold makes weights exactly zero during training, so there is no
pruning step and no retraining. The final masks are the non-zero pattern of the prunable
weights. Sparsity is not set directly: it follows from (c, μ) and the training length
(ℓ_n = c γ^{1/2} (nγ)^μ grows without bound), so a requested target is only reached
approximately, through :func:`search_c` (the authors' README: "first fix μ, then search c in a short
run").

gRDA is an optimizer, so in your own training loop (any model, data and loss) it replaces SGD;
nothing else changes. :func:`~prunelab.methods.grda.optim.grda_param_groups` thresholds the
prunable weights (biases and norm parameters train as plain SGD), and the zeros it makes are the
masks:

Example:
    >>> from prunelab.methods.grda import GRDA, grda_param_groups
    >>> optimizer = GRDA(grda_param_groups(model, lr=0.05, c=0.005, mu=0.55), lr=0.05, c=0.005, mu=0.55)
    >>> scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    >>> for batch in loader:                       # the user's loop
    ...     loss = loss_fn(model(**batch), batch); loss.backward()
    ...     optimizer.step(); optimizer.zero_grad(); scheduler.step()
    >>> masks = prunelab.Masks.from_nonzero(model)  # the weights gRDA set exactly to zero

Build the optimizer after the model is on its device and its weights are loaded (the accumulator
starts at the weights), and use no weight decay or momentum elsewhere (gRDA has none).

On a transformer nothing changes in the method: the threshold acts per weight, with no
assumption about the layer. Two things to know: the harness's dense model (trained with AdamW,
say) is not used, since gRDA trains from the initialisation with its own SGD-form steps, and
(c, μ, lr) tuned on image classifiers need retuning for a transformer, which usually trains
better with Adam; embeddings, LayerNorm parameters and biases train as plain SGD
(``threshold_all=False``).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from prunelab.errors import ConfigError
from prunelab.core.masks import Masks, prunable_parameters
from prunelab.methods.grda.optim import GRDA, grda_param_groups
from prunelab.training.loop import Callback, TrainConfig, lr_factor_fn, train
from prunelab.training.sources import batch_source
from prunelab.methods import register
from prunelab.methods.base import MethodContext, MethodOutcome, TrainingMethod, check_sparsity

SCHEDULES = ("cifar", "constant", "config")


def cifar_lr_factor(progress: float) -> float:
    """The lr factor of the authors' CIFAR runs (dnn-mode-connectivity ``train.py``).

    Args:
        progress: epoch / total epochs, in [0, 1].

    Returns:
        1 for progress <= 0.5, then linear down to 0.01 at 0.9, then 0.01.
    """
    if progress <= 0.5:
        return 1.0
    if progress <= 0.9:
        return 1.0 - (progress - 0.5) / 0.4 * 0.99
    return 0.01


def cifar_schedule(epochs: int, steps_per_epoch: int) -> Callable[[int], float]:
    """:func:`cifar_lr_factor` as a ``LambdaLR`` function of the optimizer step.

    The factor changes once per epoch, as in the official code (step // steps_per_epoch is the
    epoch index).

    Args:
        epochs: the run's length in epochs.
        steps_per_epoch: optimizer steps per epoch.

    Returns:
        ``step -> factor`` of the initial lr.
    """
    if epochs <= 0 or steps_per_epoch <= 0:
        raise ConfigError(f"cifar_schedule needs epochs > 0 and steps_per_epoch > 0, got {epochs}, {steps_per_epoch}")
    return lambda step: cifar_lr_factor((step // steps_per_epoch) / epochs)


def zero_fractions(model: nn.Module, **prunable_kwargs) -> dict[str, float]:
    """Fractions of exact zeros: among the prunable weights, and among all parameters.

    Args:
        model: the network.
        **prunable_kwargs: passed to :func:`prunelab.core.masks.prunable_parameters`.

    Returns:
        ``{"sparsity": prunable weights, "sparsity_all": every parameter (biases, norm too)}``.
    """
    with torch.no_grad():
        prunable = list(prunable_parameters(model, **prunable_kwargs).values())
        every = list(model.parameters())
        def frac(ps):
            total = sum(p.numel() for p in ps)
            zeros = sum(int((p == 0).sum()) for p in ps)
            return zeros / total if total else 0.0
        return {"sparsity": frac(prunable), "sparsity_all": frac(every)}


class _SparsityTrace(Callback):
    """Records per epoch: both sparsities, lr, train loss and validation metrics."""

    def __init__(self, log: Callable[[str], None] | None = None):
        self.records: list[dict] = []
        self.log = log

    def on_epoch_end(self, state) -> None:
        last = state.history[-1]
        record = {k: last[k] for k in ("epoch", "lr", "train_loss", "val_loss", "val_top1") if k in last}
        record.update(zero_fractions(state.model))
        self.records.append(record)
        if self.log is not None:
            top1 = record.get("val_top1")
            self.log(f"grda epoch {record['epoch']}: sparsity {record['sparsity']:.4f} "
                     f"(all {record['sparsity_all']:.4f}) val_top1 {float('nan') if top1 is None else top1:.4f}")


def _schedule_fn(schedule: str, config: TrainConfig, steps_per_epoch: int) -> Callable[[int], float]:
    if schedule == "cifar":
        return cifar_schedule(max(1, config.epochs), steps_per_epoch)
    if schedule == "constant":
        return lambda step: 1.0
    return lr_factor_fn(config, steps_per_epoch)


def train_grda(model: nn.Module, data, config: TrainConfig, c: float, mu: float,
               schedule: str = "cifar", threshold_all: bool = False,
               log: Callable[[str], None] | None = None, *, val=None, forward_fn=None,
               loss_fn=None) -> tuple[list[dict], GRDA]:
    """Train ``model`` in place with gRDA (lr, epochs, batch size and seed from ``config``).

    Args:
        model: the network, at its initialisation (on its device: the accumulators start there).
        data: a ``Dataset`` (validation metrics recorded), a ``Split``, or any data
            :func:`prunelab.training.loop.train` takes (a ``DataLoader`` of ``(x, y)`` or of dicts
            of token ids, ...).
        config: the budget; its optimizer, momentum and weight decay are ignored (gRDA has none).
        c: threshold scale.
        mu: time exponent.
        schedule: ``"cifar"`` (:func:`cifar_lr_factor`), ``"constant"``, or ``"config"``
            (``config.schedule``). The first and most of the last need the steps per epoch, so
            data without a ``len()`` need ``"constant"``.
        threshold_all: threshold biases and norm parameters too (the official behaviour).
        log: progress lines.
        val: validation data recorded per epoch (default: a ``Dataset``'s validation split).
        forward_fn: ``forward_fn(model, batch) -> output``, as :func:`~prunelab.training.loop.train`.
        loss_fn: ``loss_fn(output, batch) -> scalar``, as :func:`~prunelab.training.loop.train`.

    Returns:
        ``(per-epoch records, optimizer)``.

    Raises:
        ConfigError: an unknown schedule, or one needing the steps per epoch for data without a
            length.

    Example:
        >>> records, optimizer = train_grda(gpt2, loader, TrainConfig(epochs=1, lr=0.05), c=0.005,
        ...                                 mu=0.55, schedule="constant", loss_fn=lm_loss)
        >>> records[-1]["sparsity"]        # exact zeros among the prunable weights
    """
    if schedule not in SCHEDULES:
        raise ConfigError(f"unknown gRDA schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}")
    optimizer = GRDA(grda_param_groups(model, config.lr, c, mu, threshold_all=threshold_all),
                     lr=config.lr, c=c, mu=mu)
    train_data = data.train if hasattr(data, "train") else data
    steps_per_epoch = batch_source(train_data, config.batch_size, config.seed, config.epochs).steps_per_epoch
    if steps_per_epoch is None:
        if schedule != "constant" and not (schedule == "config" and config.schedule in ("constant", "inverse")):
            raise ConfigError(f"the gRDA schedule {schedule!r} needs the steps per epoch, but the training data "
                              "have no len(); use schedule='constant' or data with a length (a DataLoader "
                              "over a map-style dataset, a list of batches)")
        steps_per_epoch = 1
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule_fn(schedule, config, steps_per_epoch))
    trace = _SparsityTrace(log)
    train(model, data, config, optimizer=optimizer, scheduler=scheduler, callbacks=[trace], label="grda",
          val=val, forward_fn=forward_fn, loss_fn=loss_fn)
    return trace.records, optimizer


def search_c(model_factory: Callable[[], nn.Module], data, mu: float, target_sparsity: float,
             config: TrainConfig | None = None, *, epochs: int = 1, c_low: float = 1e-5,
             c_high: float = 1.0, iterations: int = 8, tolerance: float = 0.01, schedule: str = "constant",
             threshold_all: bool = False, log: Callable[[str], None] | None = None,
             forward_fn=None, loss_fn=None) -> dict:
    """Bisect c on a log scale so that a short gRDA run reaches ``target_sparsity``.

    Follows the official README's advice (fix μ, tune c in a run of 1 to 5 epochs). Each trial
    trains a fresh model from ``model_factory`` for ``epochs`` epochs (at constant lr by default)
    and measures the sparsity of the prunable weights. The result is approximate: sparsity is
    only roughly monotone in c, and it keeps growing with training (ℓ_n ∝ n^μ), so a longer run
    with the c found here ends sparser than the target. Searching with the full run's epochs and
    schedule hits the target within ``tolerance`` (when the bracket allows) at the cost of one
    full run per trial.

    Args:
        model_factory: returns a fresh model at its (seeded) initialisation.
        data: a ``Dataset``, a ``Split`` or any data :func:`train_grda` takes.
        mu: the fixed time exponent.
        target_sparsity: the wanted fraction of zero prunable weights, in [0, 1).
        config: lr, batch size and seed of the short runs (default: ``TrainConfig()``, lr 0.1).
        epochs: length of each short run.
        c_low: lower end of the bracket (> 0).
        c_high: upper end of the bracket.
        iterations: bisection steps at most (each is one short run).
        tolerance: stop when the sparsity is within this of the target.
        schedule: lr schedule of the trials (as in :func:`train_grda`).
        threshold_all: as in :func:`train_grda`.
        log: progress lines.
        forward_fn, loss_fn: as in :func:`train_grda`.

    Returns:
        ``{"c", "sparsity", "trials": [{"c", "sparsity", "sparsity_all", "val_top1"}...]}``: the
        trial closest to the target.
    """
    target = check_sparsity(target_sparsity)
    config = (config or TrainConfig()).replace(epochs=epochs)
    if not 0 < c_low < c_high or not math.isfinite(c_high):
        raise ConfigError(f"search_c needs 0 < c_low < c_high, got {c_low}, {c_high}")
    if not isinstance(iterations, int) or iterations < 1:
        raise ConfigError(f"search_c iterations must be a positive integer, got {iterations!r}")
    trials = []
    lo, hi = math.log(c_low), math.log(c_high)
    for _ in range(iterations):
        c = math.exp((lo + hi) / 2)
        model = model_factory()
        records, _ = train_grda(model, data, config, c, mu, schedule=schedule, threshold_all=threshold_all,
                                forward_fn=forward_fn, loss_fn=loss_fn)
        last = records[-1] if records else {**zero_fractions(model)}
        trial = {"c": c, "sparsity": last["sparsity"], "sparsity_all": last["sparsity_all"],
                 "val_top1": last.get("val_top1")}
        trials.append(trial)
        if log is not None:
            log(f"search_c: c={c:.3g} -> sparsity {trial['sparsity']:.4f} (target {target:.4f})")
        if abs(trial["sparsity"] - target) <= tolerance:
            break
        if trial["sparsity"] < target:
            lo = math.log(c)
        else:
            hi = math.log(c)
    best = min(trials, key=lambda t: (abs(t["sparsity"] - target), t["c"]))
    return {"c": best["c"], "sparsity": best["sparsity"], "trials": trials}


@dataclass(frozen=True)
class GRDAHparams:
    """Hyperparameters of directional pruning with gRDA.

    Attributes:
        lr: learning rate; use the rate that works for SGD without momentum (0.05 on LeNet-5 /
            Fashion-MNIST; the paper's CIFAR and ImageNet runs use 0.1). None: the harness's
            ``train_config.lr``, sensible only when that budget is plain SGD (not Adam).
        c: threshold scale (the official README: 0 < c <= 0.005; c = 0 is plain SGD, which makes
            the no-momentum SGD baseline of the paper with the same schedule).
        mu: time exponent; 0.5 < μ < 1 (0.55 gave the paper's 92 % ResNet-50 headline).
        epochs: training epochs (None: ``train_config.epochs``).
        schedule: ``"cifar"`` (factor 1 for 50 % of the epochs, linear to 0.01 at 90 %, then 0.01),
            ``"constant"``, or ``"config"`` (``train_config.schedule``).
        threshold_all: threshold biases and norm parameters too (the official code does).
        search: ignore ``c`` and pick it with :func:`search_c` for the harness's target.
        search_epochs: length of each short run of the search, at constant lr (the README's
            advice; the full run then ends sparser than the target). None: search with full runs
            on the run's own schedule, which lands on the target (slow: one run per trial).
        search_iterations: short runs at most.
    """

    lr: float | None = 0.05
    c: float = 0.005
    mu: float = 0.55
    epochs: int | None = None
    schedule: str = "cifar"
    threshold_all: bool = False
    search: bool = False
    search_epochs: int | None = 1
    search_iterations: int = 8

    def __post_init__(self):
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"unknown gRDA schedule {self.schedule!r}; choose one of {', '.join(SCHEDULES)}")
        if self.epochs is not None and (not isinstance(self.epochs, int) or self.epochs < 0):
            raise ConfigError(f"gRDA epochs must be an integer >= 0 or None, got {self.epochs!r}")
        if self.search_epochs is not None and (not isinstance(self.search_epochs, int) or self.search_epochs < 1):
            raise ConfigError(f"gRDA search_epochs must be a positive integer, got {self.search_epochs!r}")
        from prunelab.methods.grda.optim import _check_hparams

        _check_hparams(0.0 if self.lr is None else self.lr, self.c, self.mu, "grda hparams")


@register("grda")
class DirectionalPruning(TrainingMethod):
    """gRDA directional pruning (Chao et al. 2020): train once with :class:`~prunelab.methods.grda.optim.GRDA`,
    w_n = sign(a_n) · max(|a_n| − ℓ_n, 0) with a_n = a_{n−1} − γ_n g_n and ℓ_n = c γ^{1/2} (nγ)^μ
    for a constant γ (the paper's tuning function g(n, γ)).

    ``run`` trains a fresh copy of the seeded initialisation (``ctx.init_state``) for the
    budget's epochs and batch size, records per epoch the sparsity of the prunable weights and
    of all parameters, the lr and validation metrics, and returns the non-zero pattern as masks.
    ``ctx.target`` is used only when ``search`` is set (then approximately).
    """

    Hparams = GRDAHparams

    def run(self, ctx: MethodContext) -> MethodOutcome:
        """Train with gRDA and return the final model and its non-zero masks.

        Args:
            ctx: the harness context (data, model factory, init state, budgets, seed, log).

        Returns:
            A :class:`MethodOutcome`: traces ``{"epochs": [...], "search": [...]}``, info with
            the hparams used and both final sparsities, phase time ``"train"`` (and ``"search"``).
        """
        hp: GRDAHparams = self.hparams
        base: TrainConfig = ctx.train_config
        config = base.replace(
            lr=base.lr if hp.lr is None else hp.lr,
            epochs=base.epochs if hp.epochs is None else hp.epochs,
            optimizer="sgd", momentum=0.0, nesterov=False, weight_decay=0.0,
        )
        traces: dict[str, list[dict]] = {}
        phase_times: dict[str, float] = {}
        c = hp.c
        if hp.search:
            t0 = time.perf_counter()
            full = hp.search_epochs is None
            found = search_c(_seeded_factory(ctx), ctx.data, hp.mu, ctx.target, config,
                             epochs=config.epochs if full else hp.search_epochs,
                             schedule=hp.schedule if full else "constant", iterations=hp.search_iterations,
                             threshold_all=hp.threshold_all, log=ctx.log)
            phase_times["search"] = time.perf_counter() - t0
            traces["search"] = found["trials"]
            c = found["c"]
        model = _seeded_factory(ctx)()
        t0 = time.perf_counter()
        records, _ = train_grda(model, ctx.data, config, c, hp.mu, schedule=hp.schedule,
                                threshold_all=hp.threshold_all, log=ctx.log)
        phase_times["train"] = time.perf_counter() - t0
        traces["epochs"] = records
        masks = Masks.from_nonzero(model)
        final = zero_fractions(model)
        info = {
            "lr": config.lr, "c": c, "mu": hp.mu, "epochs": config.epochs, "schedule": hp.schedule,
            "threshold_all": hp.threshold_all, "target": ctx.target, **final,
            "sparsity_counted": "sparsity: zeros among prunable weights (Linear/Conv weights); "
                       "sparsity_all: zeros among all parameters (biases, norm parameters included)",
        }
        return MethodOutcome(model=model, masks=masks, traces=traces, info=info, phase_times=phase_times)


def _seeded_factory(ctx: MethodContext) -> Callable[[], nn.Module]:
    """Fresh models at exactly the harness's initialisation (``ctx.init_state``)."""

    def make() -> nn.Module:
        model = ctx.model_factory()
        if ctx.init_state:
            model.load_state_dict(ctx.init_state)
        return model

    return make
