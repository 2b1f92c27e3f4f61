"""The registered iterative methods ``os``, ``lt`` and ``sap``: :func:`iterate` run for the harness."""

from __future__ import annotations

from prunelab.methods import register
from prunelab.methods.base import IterativeMethod, MethodContext, MethodOutcome
from prunelab.methods.iterative.driver import iterate
from prunelab.methods.iterative.schedules import FixedFractionHparams, SAPHparams


class _ScheduleMethod(IterativeMethod):
    schedule = ""

    def run(self, ctx: MethodContext) -> MethodOutcome:
        """Run the schedule for the harness (see the module docstring for how the configs map)."""
        model = ctx.model_factory()
        model.load_state_dict(ctx.init_state)
        result = iterate(model, ctx.data, self.schedule, hparams=self.hparams, train_config=ctx.train_config,
                         retrain_config=ctx.retrain_config, dense_model=ctx.dense_model,
                         target=ctx.target, log=ctx.log)
        return result.to_outcome()


@register("os")
class OneShotRounds(_ScheduleMethod):
    """One-shot (OS) rounds: every mask cut from the dense trained weights, each retrained from
    θ_0 (the ``os-P`` baseline of Diao et al. 2023): round t keeps the round((1 − P)^t · n) largest
    |w| of the dense weights in each unit."""

    Hparams = FixedFractionHparams
    schedule = "os"


@register("lt")
class LotteryTicket(_ScheduleMethod):
    """Lottery ticket (iterative magnitude pruning with rewinding; Frankle & Carbin 2019, the
    ``lt-P`` baseline of Diao et al. 2023): round t keeps the round((1 − P)^t · n) largest |w|
    of the weights retrained in round t − 1, in each unit."""

    Hparams = FixedFractionHparams
    schedule = "lt"


@register("sap")
class SAP(_ScheduleMethod):
    """Sparsity-informed Adaptive Pruning (Diao et al. 2023, Algorithm 1): prune
    c_t = ⌊d_t min(γ(1 − r_t/d_t), β)⌋ weights per round, r_t from the PQ Index (Theorem 2)."""

    Hparams = SAPHparams
    schedule = "sap"
