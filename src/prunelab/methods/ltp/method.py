"""LTP as a registered training-time method: learn thresholds, pick, match the target, fine-tune."""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

from prunelab.errors import ConfigError, MethodError
from prunelab.training.loop import OPTIMIZERS, train
from prunelab.methods import register
from prunelab.methods.base import MethodContext, MethodOutcome, TrainingMethod, check_sparsity
from prunelab.methods.ltp.soft_mask import GRADIENTS, PENALTIES
from prunelab.methods.ltp.thresholds import restore_at_target
from prunelab.methods.ltp.trail import learn_thresholds


@dataclass(frozen=True)
class LTPHparams:
    """Hyperparameters of LTP.

    Defaults were tuned on the Fashion-MNIST validation split with LeNet-300-100 (dense model:
    20 Adam epochs; budget 10 epochs, fine-tune with Adam 3e-3 cosine) for 40x compression.
    Sparsity is set *indirectly* by ``penalty_weight`` (the trail settles where the L0 pull
    balances the task loss), so other targets want other λ: on that setup λ = 1, 3, 15 (with
    ``gradient="exact"``) reached 20x, 40x and 100x at epochs 3, 7 and 2 of 9.

    Attributes:
        penalty_weight: λ, weight of the penalty normalised by the number of prunable weights.
        temperature: T₀ of T_l = T₀·Var(|w_l|).
        threshold_lr: learning rate of the relative thresholds θ_l = τ_l / mean(w_l² at start).
        threshold_momentum: SGD momentum of the thresholds (0: see
            :meth:`SoftThresholdModel.parameter_groups` for why).
        penalty: ``"l0"`` (LTP), ``"l1"`` or ``"l2"`` (batch-norm study).
        gradient: ``"approx"`` (Eq. 14) or ``"exact"``.
        threshold_init_quantile: initial τ_l as a quantile of w_l² (0: τ = 0).
        epochs: the whole budget, LTP plus fine-tuning (None: the harness's retraining epochs, so
            LTP costs what retraining costs the one-shot methods).
        min_finetune_epochs: LTP runs at most ``epochs - min_finetune_epochs`` epochs.
        stop_at_target: stop LTP as soon as the hard mask reaches the target compression
            (checked every ``check_every`` steps) and fine-tune for the rest of the budget;
            otherwise LTP runs its maximum and the fine-tune gets ``min_finetune_epochs``.
        check_every: steps between target checks.
        optimizer: optimizer of the LTP phase (``"sgd"``, ``"adam"``, ``"adamw"``; None: the
            retraining config's); the fine-tune always uses the retraining config. The defaults
            of ``threshold_lr`` and ``penalty_weight`` are tuned for SGD (with Adam the threshold
            step no longer scales with the gradient).
        lr: learning rate of the weights during LTP (None: the retraining config's); momentum,
            schedule and batch size come from the retraining config.
        stall_fraction: warn when the transition fraction falls below this.
        match_target: bring the picked entry to the target before the fine-tune, so comparisons
            stay at matched compression: short of it, prune further by global magnitude (the
            smallest |w| among the kept weights; share in ``info["filled_fraction"]``); past it by
            more than 2 % (the last entry only), lower every threshold by one common factor,
            reviving the pruned weights of largest w²/τ_l (share in ``info["revived_fraction"]``).
            False: keep the entry as it is (a shortfall is logged).
    """

    penalty_weight: float = 3.0
    temperature: float = 2.0
    threshold_lr: float = 1.0
    threshold_momentum: float = 0.0
    penalty: str = "l0"
    gradient: str = "approx"
    threshold_init_quantile: float = 0.0
    epochs: int | None = None
    min_finetune_epochs: int = 1
    stop_at_target: bool = True
    check_every: int = 10
    optimizer: str | None = "sgd"
    lr: float | None = 0.03
    stall_fraction: float = 1e-3
    match_target: bool = True

    def __post_init__(self):
        if self.penalty not in PENALTIES:
            raise ConfigError(f"unknown penalty {self.penalty!r}; choose one of {', '.join(PENALTIES)}")
        if self.gradient not in GRADIENTS:
            raise ConfigError(f"unknown gradient {self.gradient!r}; choose one of {', '.join(GRADIENTS)}")
        for name in ("penalty_weight", "min_finetune_epochs", "threshold_momentum"):
            if not getattr(self, name) >= 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        for name in ("temperature", "threshold_lr"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)!r}")
        if not 0.0 <= self.threshold_init_quantile < 1.0:
            raise ConfigError(f"threshold_init_quantile must be in [0, 1), got {self.threshold_init_quantile!r}")
        if self.epochs is not None and (not isinstance(self.epochs, int) or self.epochs < 1):
            raise ConfigError(f"epochs must be an integer >= 1 or None, got {self.epochs!r}")
        if not isinstance(self.check_every, int) or self.check_every < 1:
            raise ConfigError(f"check_every must be an integer >= 1, got {self.check_every!r}")
        if self.optimizer is not None and self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"unknown optimizer {self.optimizer!r}; choose one of {', '.join(OPTIMIZERS)} or None")
        if self.lr is not None and not self.lr > 0:
            raise ConfigError(f"lr must be > 0 or None, got {self.lr!r}")


@register("ltp")
class LTP(TrainingMethod):
    """Learned Threshold Pruning (Azarian et al. 2020): soft masks σ((w² − τ_l)/T_l) (Eq. 1),
    T_l = T₀·Var|w_l| (Eq. 15), a soft-L0 penalty (Eq. 6), Eq. 14 gradients; see the module
    docstring for every choice the paper leaves open.

    ``run`` starts from ``ctx.dense_model`` and spends ``epochs`` epochs in all (default: the
    retraining budget): LTP with the retraining recipe for the weights plus a threshold group,
    until the hard mask reaches the target compression 1/(1 − target) (or for at most
    ``epochs - min_finetune_epochs`` epochs), then it picks the trail entry of smallest
    compression ≥ the target (falling back, with a logged warning, to the most compressed entry),
    brings it to the target (``match_target``, see the module docstring) and fine-tunes it with
    that hard mask fixed for the remaining epochs.
    """

    Hparams = LTPHparams

    def run(self, ctx: MethodContext) -> MethodOutcome:
        hp = self.hparams
        target = check_sparsity(ctx.target)
        if ctx.dense_model is None:
            raise MethodError("LTP starts from a trained dense model, but the harness gave none "
                              "(ctx.dense_model is None); train the dense model first")
        base = ctx.retrain_config
        budget = hp.epochs if hp.epochs is not None else base.epochs
        max_ltp = budget - hp.min_finetune_epochs
        if max_ltp < 1:
            raise ConfigError(f"LTP needs at least one epoch: the budget ({budget} epochs) minus "
                              f"min_finetune_epochs ({hp.min_finetune_epochs}) is {max_ltp}; "
                              "raise the retraining epochs or set epochs")
        config = base.replace(epochs=max_ltp, optimizer=hp.optimizer or base.optimizer, lr=hp.lr or base.lr,
                              seed=ctx.seed)
        target_compression = 1.0 / (1.0 - target)
        model = copy.deepcopy(ctx.dense_model)
        t0 = time.perf_counter()
        trail, _ = learn_thresholds(
            model, ctx.data, config, penalty_weight=hp.penalty_weight, temperature=hp.temperature,
            threshold_lr=hp.threshold_lr, threshold_momentum=hp.threshold_momentum, penalty=hp.penalty,
            gradient=hp.gradient,
            threshold_init_quantile=hp.threshold_init_quantile, stall_fraction=hp.stall_fraction,
            stop_at_compression=target_compression if hp.stop_at_target and target > 0 else None,
            check_every=hp.check_every, log=ctx.log)
        train_time = time.perf_counter() - t0
        entry = trail.pick(target_compression=target_compression, strict=False)
        reached = entry.compression >= target_compression * (1 - 1e-9)
        ltp_epochs = trail[-1].epoch
        finetune_epochs = budget - ltp_epochs
        masks, matched = restore_at_target(model, trail, entry, target, match=hp.match_target, log=ctx.log)
        if not reached:
            ctx.log(f"warning: LTP reached only {entry.compression:.2f}x of the {target_compression:.2f}x "
                    f"target in {max_ltp} epochs; raise penalty_weight, threshold_lr or epochs"
                    + ("; pruned the rest by global magnitude" if hp.match_target else ""))
        phase_times = {"prune": train_time}
        finetune_history: list[dict] = []
        if finetune_epochs > 0:
            t1 = time.perf_counter()
            # Keep the best-validation epoch, as the harness does when retraining one-shot methods.
            state = train(model, ctx.data, base.replace(epochs=finetune_epochs, seed=ctx.seed + 1),
                          masks=masks, label="ltp fine-tune", select_best=len(ctx.data.val) > 0)
            finetune_history = state.history
            phase_times["retrain"] = time.perf_counter() - t1
        info = {
            "picked_epoch": entry.epoch, "picked_step": entry.step, "picked_compression": entry.compression,
            "picked_val_top1": entry.val_top1, "target_compression": target_compression,
            "target_reached": reached, **matched, "ltp_epochs": ltp_epochs,
            "finetune_epochs": finetune_epochs,
            "thresholds": entry.thresholds,
        }
        return MethodOutcome(model=model, masks=masks,
                             traces={"trail": trail.records(), "finetune": finetune_history},
                             info=info, phase_times=phase_times)
