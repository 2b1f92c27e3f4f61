"""What a report scores a group of runs by: top-1 accuracy, or bits per byte for language models.

Image classifiers are compared by test top-1 accuracy (higher is better, shown in %). Language
models on token data (runs whose metrics hold ``final_test_bpb``, see
:func:`prunelab.core.metrics.lm_scores`) are compared by test bits per byte (lower is better) and
perplexity instead: their per-token top-1 says little about how well they model the text.
:mod:`prunelab.harness.report` draws its tables and figures from the :class:`GroupScore` of each group.
"""

from __future__ import annotations

from dataclasses import dataclass

_COMMON_HEAD = (
    ("sparsity", "sparsity", "pct"),
    ("compression", "compression_ratio", "x"),
    ("speedup", "theoretical_speedup", "x"),
)
_COMMON_TAIL = (
    ("prune s", "time_prune", "s"),
    ("retrain s", "time_retrain", "s"),
    ("method s", "time_total", "s"),
)


@dataclass(frozen=True)
class GroupScore:
    """How one group's table, figures and terminal summary score its runs.

    Attributes:
        name: ``"top1"`` or ``"bpb"``.
        columns: the results table's ``(header, metric key, kind)`` columns.
        pruned, final, dense: the metric keys drawn after pruning, at the end, and for the dense line.
        scale: multiplies the drawn values (100: fractions shown in %).
        axis: the y-axis label of the score figures.
        retrain_key, retrain_axis: the retraining-history key drawn per epoch and its axis label.
        caption: how figure captions name the score.
        terminal: the terminal summary's heading for the final test score.
        kind: how a score cell is formatted (see ``report._fmt``).
    """

    name: str
    columns: tuple
    pruned: str
    final: str
    dense: str
    scale: float
    axis: str
    retrain_key: str
    retrain_axis: str
    caption: str
    terminal: str
    kind: str


TOP1 = GroupScore(
    name="top1",
    columns=_COMMON_HEAD + (
        ("pruned test top-1", "pruned_test_top1", "pct"),
        ("final test top-1", "final_test_top1", "pct"),
        ("final test top-5", "final_test_top5", "pct"),
        ("final val top-1", "final_val_top1", "pct"),
    ) + _COMMON_TAIL,
    pruned="pruned_test_top1", final="final_test_top1", dense="dense_test_top1", scale=100,
    axis="test top-1 accuracy (%)", retrain_key="val_top1", retrain_axis="val top-1 (%)",
    caption="Test top-1", terminal="final test top-1 (%)", kind="pct",
)

BPB = GroupScore(
    name="bpb",
    columns=_COMMON_HEAD + (
        ("pruned test bpb", "pruned_test_bpb", "bpb"),
        ("final test bpb", "final_test_bpb", "bpb"),
        ("final test ppl", "final_test_ppl", "ppl"),
        ("final val bpb", "final_val_bpb", "bpb"),
    ) + _COMMON_TAIL,
    pruned="pruned_test_bpb", final="final_test_bpb", dense="dense_test_bpb", scale=1,
    axis="test bits per byte (lower is better)", retrain_key="val_bpb", retrain_axis="val bits per byte",
    caption="Test bits per byte (lower is better)", terminal="final test bits per byte (lower is better)",
    kind="bpb",
)


def is_language_model_run(result) -> bool:
    """Whether a run scored a language model on token data (its metrics hold ``final_test_bpb``)."""
    return "final_test_bpb" in (getattr(result, "metrics", None) or {})


def group_score(by_label: dict) -> GroupScore:
    """:data:`BPB` when any run of the group (``{label: {target: [RunResult]}}``) is a language
    model on token data, else :data:`TOP1`."""
    runs = (r for by_target in by_label.values() for rs in by_target.values() for r in rs)
    return BPB if any(is_language_model_run(r) for r in runs) else TOP1
