"""The LTP reproduction suite (issue 9): ``prunelab bench --suite ltp``.

Fashion-MNIST, LeNet-300-100 and LeNet-5. LTP (Azarian et al. 2020) against gradual magnitude
pruning (Zhu & Gupta) and one-shot global magnitude pruning + retraining, at matched compression
(20×, 40×, 100×: sparsity 0.95, 0.975, 0.99) and equal epochs: every method gets the same 10-epoch
retraining budget from the same dense model. LTP's sparsity is set indirectly by λ
(``penalty_weight``); the values below were chosen on the *validation* split of LeNet-300-100
(λ = 1, 3, 15 reach 20×, 40×, 100× within the budget), and LTP stops at the target and fine-tunes
with the mask fixed for the remaining epochs.

The batch-norm study runs LTP on a narrow ``cnn`` (BN after every conv) with the L0 term and,
under the same thresholding, with L1 and L2 penalties on the weights instead.
"""

from __future__ import annotations

from .suites import Suite, grid, register_suite

DENSE = {"epochs": 20, "optimizer": "adam", "lr": 1e-3, "schedule": "cosine"}
RETRAIN = {"epochs": 10, "optimizer": "adam", "lr": 3e-3, "batch_size": 128, "schedule": "cosine"}
TARGETS = (0.95, 0.975, 0.99)

LTP_ENTRIES = [
    ("ltp", {"gradient": "exact", "penalty_weight": 1.0}, [0.95]),
    ("ltp", {"gradient": "exact", "penalty_weight": 3.0}, [0.975]),
    ("ltp", {"gradient": "exact", "penalty_weight": 15.0}, [0.99]),
    ("gmp", {"end_fraction": 0.5}, list(TARGETS)),
    ("magnitude", {}, list(TARGETS)),
]

BN_STUDY = [("ltp", {"penalty": penalty, "penalty_weight": weight, "stop_at_target": False}, [0.9])
            for penalty, weight in (("l0", 1.0), ("l1", 30.0), ("l2", 30.0))]


@register_suite("ltp")
def ltp_suite(dataset: str | None = None) -> Suite:
    """LTP vs GMP vs magnitude + retraining at 20/40/100×, plus the batch-norm study."""
    dataset = dataset or "fashion-mnist"
    specs = grid(dataset, ["lenet-300-100", "lenet5"], LTP_ENTRIES, TARGETS, (0,), DENSE, RETRAIN)
    specs += grid(dataset, [("cnn", {"widths": [8, 16, 32, 64]})], BN_STUDY, (0.9,), (0,),
                  {"epochs": 4, "optimizer": "adam", "lr": 1e-3}, {"epochs": 5, "optimizer": "sgd", "lr": 0.03})
    return Suite("ltp", tuple(specs),
                 description=f"{dataset}: LTP vs GMP vs magnitude+retrain at 20/40/100x (10 retraining epochs), "
                             "LeNet-300-100 and LeNet-5; BN study on a narrow cnn (L0 vs L1 vs L2)",
                 notes="LTP's lambda per target was chosen on the validation split of LeNet-300-100; "
                       "LeNet-5 uses the same values (not tuned).")
