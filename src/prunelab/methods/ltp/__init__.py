"""Learned Threshold Pruning (Azarian, Bhalgat, Lee, Blankevoort 2020, arXiv:2003.00075).

Every prunable weight tensor ``w_l`` (:func:`prunelab.core.masks.prunable_parameters`) gets one
learnable threshold ``τ_l``. During training the layer computes with the soft-pruned weight

    v = w · σ((w² − τ_l) / T_l)                          (Eq. 1)
    T_l = T₀ · Var(|w_l|)      recomputed every step, detached       (Eq. 15)

and the loss adds ``λ · soft-L0 / N`` with soft-L0 = Σ_l Σ_k σ((w_kl² − τ_l)/T_l) (Eq. 6) and ``N``
the number of prunable weights, so the penalty is the *soft density* in (0, 1) and ``λ`` means the
same on any model size. At the end of each epoch the hard mask ``1[w² > τ_l]`` gives one point of
the *trail*: compression, validation accuracy, thresholds, and the transition fraction.

The authors published no code and the paper leaves the following open; the choices made here,
each tested in tests/test_ltp.py:

- **Gradient (Eq. 14).** By default the sigmoid is treated as constant with respect to ``w``:
  ∂v/∂w = σ(·), and the L0 term gives ``w`` no gradient, so it acts on the thresholds only.
  ``gradient="exact"`` uses ∂v/∂w = σ + (2w²/T)·σ' and lets the L0 term shrink ``w`` too. ``τ``
  always gets its full gradient. Both are one fused autograd function (:class:`_SoftThreshold`).
- **Threshold units.** ``τ_l = s_l · θ_l`` where ``θ_l`` is the learned parameter and ``s_l`` the
  layer's mean ``w²`` when wrapping (a fixed buffer). An SGD step on ``θ`` then moves every
  layer's threshold by the same fraction of its own weight scale, so one ``threshold_lr`` suits
  layers whose weights differ by orders of magnitude. The trail records ``τ`` itself.
- **Initial threshold.** ``τ_l`` starts at the ``threshold_init_quantile`` quantile of ``w_l²``
  (default 0: ``τ = 0``, the hard mask keeps every weight).
- **Temperature.** ``Var`` is the population variance of ``|w_l|`` over the whole layer (pruned
  weights included), plus 1e-20 so an all-zero layer does not divide by zero.
- **Penalties.** ``penalty="l1"`` / ``"l2"`` replace the L0 term by ``λ · Σ|w| / N`` or
  ``λ · Σw² / N`` on the underlying weights, thresholds still learned (by the task loss only):
  the paper's abstract argues that L1 and L2 lose their regularising effect under batch-norm,
  and the batch-norm study compares the three.
- **Evaluation.** In ``eval()`` mode the wrapped model uses the hard mask ``w · 1[w² > τ]`` (the
  deployed network), in ``train()`` mode the soft mask. Each trail network's batch-norm
  statistics are re-estimated on 2000 training samples first (they were gathered with soft
  weights; on a narrow BN CNN at 15x this moved hard-mask validation accuracy from 26 % to 73 %).
- **Trail selection.** :meth:`Trail.pick` by target compression takes the entry with the
  smallest compression at or above the target; by accuracy floor the most compressed entry
  meeting it.
- **Matching the target.** :class:`LTP` (the harness method) compares at matched compression
  (``match_target``). Short of the target after its epochs (measured: one of five Fashion-MNIST
  seeds stopped at 39.6x of 40x), the most compressed entry is pruned further by global magnitude
  to exactly the target. Past it by more than 2 % (the thresholds jump in the first steps: a
  LeNet-300-100 checked every 10 steps was at 8x when asked for 2x), every learned threshold is
  lowered by one common factor, i.e. the pruned weights of largest w²/τ_l come back (with the
  values LTP trained), until exactly the target is kept; this keeps LTP's per-layer allocation
  and is possible for the last trail entry, whose unmasked weights are the model's. The shares
  filled or revived are recorded.
- **Stall warning.** When the share of weights with ``|w² − τ|/T < 4`` (where σ' is not
  negligible) falls below ``stall_fraction``, τ receives almost no gradient and pruning stops
  ("premature termination", §3.2 of the paper): :class:`LTPStallWarning` is issued and logged.

In your own training loop (any data, optimizer, scheduler and loss) use
:class:`LearnedThresholds` (:mod:`prunelab.methods.ltp.own_loop`): train ``ltp.model``, add
``ltp.penalty_term()`` to the loss, call ``ltp.step()`` after each optimizer step; ``ltp.reached``
says when a target compression is reached and ``ltp.hard_model()`` gives the result at it.

On a transformer (the paper's models are CNNs with batch norm). The paper's batch-norm argument
is about the penalty, not the soft mask: a conv followed by batch norm computes the same for any
scale of its weights, so L1/L2 penalties can shrink the weights without cost and lose their
effect, while an L0 penalty on thresholds does not. Nothing in Eq. 1, 6 or 15 needs batch norm:
the temperature ``T_l = T₀·Var|w_l|`` and the threshold units (mean ``w²`` of the layer) follow
each layer's own weight scale, which absorbs GPT-2's small initialisation. A pre-LayerNorm
transformer normalises the residual stream before ``qkv`` and ``fc``, not the Linear layers'
outputs: scaling ``qkv`` changes the attention's temperature, ``fc`` the GELU's input and the
projections what is added to the residual stream, so weight scale is not free there and the
L1/L2 variants keep their effect. Without batch-norm layers there is nothing to recalibrate
before each trail entry. Checked on a one-layer ``gpt``: the thresholds rise from 0 and the
hard mask passes 2x compression within one epoch of SGD (tests/test_methods_lm.py).

Example:
    >>> trail, wrapped = learn_thresholds(model, data, TrainConfig(epochs=8, optimizer="sgd", lr=0.03),
    ...                                   penalty_weight=3.0, temperature=2.0, threshold_lr=1.0)
    >>> entry = trail.pick(target_compression=40)
    >>> masks = entry.restore(model)
"""

from prunelab.training.batchnorm import recalibrate_batchnorm
from prunelab.methods.ltp.soft_mask import (
    GRADIENTS, PENALTIES, TRANSITION_BAND, SoftThresholdModel, _SoftThreshold, hard_mask, soft_mask,
    temperature_of,
)
from prunelab.methods.ltp.thresholds import MATCH_TOLERANCE, lower_thresholds_to, restore_at_target
from prunelab.methods.ltp.trail import LTPCallback, LTPStallWarning, Trail, TrailEntry, learn_thresholds
from prunelab.methods.ltp.own_loop import LearnedThresholds
from prunelab.methods.ltp.method import LTP, LTPHparams

__all__ = [
    "GRADIENTS", "PENALTIES", "TRANSITION_BAND", "MATCH_TOLERANCE", "SoftThresholdModel", "soft_mask", "hard_mask",
    "temperature_of", "recalibrate_batchnorm", "lower_thresholds_to", "restore_at_target", "Trail", "TrailEntry",
    "LTPCallback", "LTPStallWarning", "learn_thresholds", "LearnedThresholds", "LTP", "LTPHparams",
]
