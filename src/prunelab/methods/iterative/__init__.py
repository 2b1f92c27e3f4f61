"""Iterative pruning: one-shot (OS), lottery ticket (LT) and SAP, one driver (Diao et al., ICLR 2023).

The driver follows the authors' code (``train_classifier.py``)::

    m_0 = all ones;  θ_0 = initial parameters (saved)
    for t = 0 .. T:
        t > 0:  m_t ⊆ m_{t−1} from the source weights w_src (schedule below)
                evaluate w_src ⊙ m_t                  ("pruned": before retraining)
                rewind: every parameter and buffer ← θ_0 (or θ_k), pruned weights ← 0
        train E epochs with m_t fixed; fresh optimizer and LR schedule (cosine in the recipe)
        keep the epoch with the best VALIDATION top-1 (the paper's code picks on test)
        record density, PQ Index (chosen (p, q) and the p×q grid), Gini, accuracies, times

Schedules (how m_t is cut from m_{t−1}):

* ``os``: magnitudes of the DENSE trained weights (round 0); each round keeps
  round((1−P)^t · n) weights of each unit (a unit is the whole model, a layer or a neuron, by
  scope), so the density follows (1−P)^t exactly in counts. The paper's code takes a quantile
  of the remaining weights instead (the same up to rounding and ties).
* ``lt``: the same counts from the weights retrained in the current round (lottery ticket).
* ``sap``: per unit with d_t remaining weights and PQ Index I = I_{p,q}(w_t) (Algorithm 1,
  Theorem 2)::

      r_t = d_t (1+η_r)^{−q/(q−p)} (1 − I)^{qp/(q−p)}
      c_t = ⌊d_t · min(γ (1 − r_t/d_t), β)⌋      (and ≥ 0)

  and the c_t smallest-magnitude remaining weights are pruned. r_t is used as a real number, as
  in the paper; the code rounds it up first, which gives the same c_t when γ = 1 (d_t is an
  integer) and at most ⌈γ⌉ fewer otherwise.

Each schedule is a :class:`Schedule` in :data:`SCHEDULES`: its hyperparameters, its allocation
rule (:func:`fixed_fraction_rule` or :func:`pq_bound_rule`, any function of the
:data:`AllocationRule` shape) and whose magnitudes decide (the dense or the current weights).

Exact counts: the weights pruned are the c smallest |w| among the remaining ones, ties broken by
position (a stable sort), so exactly c are pruned; the code's ``|w| < pivot`` can prune fewer on
ties. Masks only shrink (m_{t+1} ⊆ m_t).

Rewinding: ``rewind="init"`` restores θ_0 for every parameter and buffer (the code restores the
parameters only; BN running statistics then carry over, which we find an accident);
``rewind="k"`` restores θ_k, the state after k optimizer steps of round 0 (round 0 is then
trained here even when the harness has a dense model); ``rewind="none"`` fine-tunes the pruned
source weights. The LR schedule restarts in full every round (OpenLTH instead resumes it at k).
Each round t trains with batch-order seed ``config.seed + t`` (the code's loader keeps shuffling).

Training recipe: the function API :func:`iterate` takes ``train_config`` (round 0) and
``retrain_config`` (rounds ≥ 1); by default both are :func:`paper_train_config` (SGD lr 0.1,
momentum 0.9, Nesterov, weight decay 5e-4, batch 250, cosine per round, gradient-norm clip 1.0).
Run by the harness, round 0 is the harness's dense model (``ctx.dense_model``, trained with
``ctx.train_config``) unless ``rewind="k"``, and rounds ≥ 1 train with ``ctx.retrain_config``;
the hparam ``epochs`` overrides the epochs of both. The prunelab loop masks gradients before
clipping them; the paper's code clips first (the norm then includes pruned entries' gradients).

On a transformer (the paper's models are image classifiers) the rounds are unchanged; what a
``neuron`` is changes. A neuron is an output unit of a weight matrix: a row of an ``nn.Linear``
weight, a column of a HuggingFace ``Conv1D`` weight (stored ``(in, out)``; the PQ Index and the
allocation both take its columns). In the fused attention ``qkv`` a neuron is one query, key or
value feature of one head (the row's weights are what that feature reads from the residual
stream), so ``scope="neuron"`` balances features, not heads; ``attn.proj`` and ``mlp.proj``
neurons are residual-stream features. The tied head/embedding is not prunable by default and
enters no PQ Index.
"""

from prunelab.methods.iterative.allocation import (
    AllocationRule, fixed_fraction_masks, fixed_fraction_rule, keep_count, pq_bound_rule, prune_lowest,
    sap_masks, sap_prune_count, sap_retained,
)
from prunelab.methods.iterative.schedules import (
    REWINDS, SCHEDULES, SELECTS, FixedFractionHparams, IterativeHparams, SAPHparams, Schedule,
    paper_train_config,
)
from prunelab.methods.iterative.driver import IterativeResult, iterate
from prunelab.methods.iterative.method import SAP, LotteryTicket, OneShotRounds

__all__ = [
    "SCHEDULES", "REWINDS", "SELECTS", "Schedule", "AllocationRule", "IterativeHparams", "FixedFractionHparams",
    "SAPHparams", "IterativeResult", "paper_train_config", "keep_count", "sap_retained", "sap_prune_count",
    "prune_lowest", "fixed_fraction_masks", "sap_masks", "fixed_fraction_rule", "pq_bound_rule", "iterate",
    "OneShotRounds", "LotteryTicket", "SAP",
]
