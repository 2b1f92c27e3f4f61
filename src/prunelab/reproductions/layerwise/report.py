"""The ``layerwise`` suite's own report: ``report.md`` (figures beside it), ``report.html`` (one
self-contained page) and ``layerwise_results.json``, rendered through :mod:`prunelab.utils.render`."""

from __future__ import annotations

import json
from pathlib import Path

from prunelab.reproductions.common import pct, open_suite_store, results_main, write_report
from prunelab.reproductions.layerwise.collect import collect
from prunelab.reproductions.layerwise.figures import fig_accuracy, fig_accuracy_vs_time
from prunelab.reproductions.layerwise.protocol import COST_TARGET, METHODS, PATTERN
from prunelab.reproductions.pitas.tables import secs
from prunelab.utils.memory import format_bytes
from prunelab.utils.render import Document, Figure, Paragraph, Section, Table

__all__ = ["table_model", "report_document", "write_layerwise_report", "main"]

TITLE = "Layer-wise pruners compared: accuracy, prune time and peak memory"


def _at(points: list, target: float) -> dict | None:
    return next((p for p in points if abs(p["target"] - target) < 1e-9), None)


def _accuracy(p: dict | None) -> str:
    """``"without → with retraining"`` test top-1 (%) of a point; empty when there is none."""
    if p is None:
        return ""
    if not p["retrain_epochs"]:
        return pct(p["pruned_test_top1"])
    return f"{pct(p['pruned_test_top1'])} → {pct(p['final_test_top1'])}"


def _peak(p: dict | None) -> str:
    if p is None:
        return ""
    return "–" if p["peak_bytes"] is None else format_bytes(p["peak_bytes"])


def table_model(info: dict, cost_target: float = COST_TARGET) -> tuple[list, list]:
    """One model's table: test top-1 without → with retraining per method and target, the N:M
    pattern as its own column, and the prune seconds and peak memory at ``cost_target`` and at the pattern.

    Args:
        info: one model of :func:`~prunelab.reproductions.layerwise.collect.collect`'s output.
        cost_target: the unstructured target whose cost is shown.

    Returns:
        ``(header, rows)``.
    """
    targets = sorted({p["target"] for m in info["methods"].values() for p in m["points"]})
    patterns = sorted({p["pattern"] for m in info["methods"].values() for p in m["pattern"]})
    cost = f"{100 * cost_target:g} %"
    header = (["method"] + [f"{100 * t:g} %" for t in targets] + patterns
              + [f"prune s ({cost})", f"peak memory ({cost})"]
              + [x for pat in patterns for x in (f"prune s ({pat})", f"peak memory ({pat})")])
    rows = []
    for name, m in info["methods"].items():
        by_pattern = {p["pattern"]: p for p in m["pattern"]}
        at_cost = _at(m["points"], cost_target)
        row = [name] + [_accuracy(_at(m["points"], t)) for t in targets]
        row += [_accuracy(by_pattern.get(pat)) for pat in patterns]
        row += [secs(at_cost["prune_s"]) if at_cost else "", _peak(at_cost)]
        for pat in patterns:
            p = by_pattern.get(pat)
            row += [secs(p["prune_s"]) if p else "", _peak(p)]
        rows.append(row)
    return header, rows


def report_document(collected: dict, intro: list[str]) -> Document:
    """The report's content: a table per model, then the two figures."""
    order = [m.name for m in METHODS] + [n for info in collected.values() for n in info["methods"]
                                         if n not in {m.name for m in METHODS}]
    kinds = sorted({str(p["peak_kind"]) for info in collected.values() for m in info["methods"].values()
                    for p in m["points"] + m["pattern"]})
    text = [f"Every method prunes the same trained dense model, every layer but the classifier, to the target (each "
            f"layer loses that fraction of its weights; hard thresholding's histogram rule prunes at most about that "
            f"much), or to the {PATTERN} pattern (the methods that offer it; an empty cell: the method has no "
            "pattern). Cells: test top-1 right after pruning → after the short retraining with the mask fixed. "
            "Prune s: wall seconds of the prune phase (capture of the calibration activations included). Peak "
            f"memory: the prune phase's peak above the memory in use when it started (measured as: {', '.join(kinds)}; "
            "rss = the process's peak resident memory, so it includes the calibration activations and any "
            "solver workspace; cuda = allocated tensors on the GPU; – = not measurable here)."]
    tables = []
    for model, info in collected.items():
        dense = info["dense"]
        m0 = next(iter(info["methods"].values()))
        kwargs = f" {json.dumps(info['model_kwargs'], sort_keys=True)}" if info.get("model_kwargs") else ""
        caption = (f"{model}{kwargs} on {info['dataset']}: dense "
                   f"test top-1 {pct(dense['test_top1'])} % (val {pct(dense['val_top1'])} %), trained in "
                   f"{secs(dense['seconds'])} s (budget {json.dumps(dense['budget'], sort_keys=True)}); "
                   f"{m0['calib_size']} calibration images.")
        tables.append(Table(*table_model(info), caption=caption))
    figures = [
        Figure("accuracy-vs-target", fig_accuracy(collected, order),
               "Test top-1 without retraining against the target; hollow markers: the N:M pattern; dashed: dense."),
        Figure("accuracy-vs-prune-time", fig_accuracy_vs_time(collected, order),
               f"Test top-1 without retraining at {COST_TARGET:.0%} sparsity against prune wall time (log)."),
    ]
    hparams = ["Hyperparameters per model (defaults otherwise): " + "; ".join(
        f"{model}: " + ", ".join(f"{name} {json.dumps(m['hparams'], sort_keys=True)}" for name, m in info["methods"].items()
                                 if m["hparams"]) for model, info in collected.items()) + "."]
    return Document(TITLE, intro, [Section("Accuracy, prune time and peak memory", [Paragraph(p) for p in text]
                                           + tables + figures + [Paragraph(p) for p in hparams])])


def write_layerwise_report(outdir, dest=None, results=None) -> dict:
    """Write the suite's report: ``report.md`` (figures as PNGs beside it), ``report.html``
    (figures embedded) and ``layerwise_results.json``.

    Args:
        outdir: the bench output directory (holding ``results.sqlite``), or, with ``results``, any
            folder (for the default ``dest``).
        dest: where to write (default ``OUTDIR/layerwise``).
        results: the run results to report (default: every run of the store).

    Returns:
        ``{"markdown", "html", "json", "figures": [paths]}``.

    Raises:
        ConfigError: no result store, or no one-shot run in it.

    Example:
        >>> write_layerwise_report("runs/layerwise")["markdown"]   # doctest: +SKIP
        PosixPath('runs/layerwise/layerwise/report.md')
    """
    outdir = Path(outdir)
    dest, results, suites, collected = open_suite_store(outdir, outdir / "layerwise" if dest is None else dest, "layerwise",
                                                        collect, lambda c: not c, "one-shot", results)
    provenance = sorted({str(r.info.get("git_sha")) for r in results})
    runs = sum(len(m["points"]) + len(m["pattern"]) for i in collected.values() for m in i["methods"].values())
    intro = [f"{runs} runs, prunelab git {', '.join(provenance)}; torch "
             f"{', '.join(sorted({str(r.info.get('torch')) for r in results}))}; threads "
             f"{', '.join(sorted({str(r.info.get('threads')) for r in results}))}; devices "
             f"{', '.join(sorted({str(r.info.get('device')) for r in results}))}. Accuracies in %."]
    for name, info in suites.items():
        intro.append(f"Suite `{name}`: {info.get('description', '')}. {info.get('notes', '')}")
    doc = report_document(collected, intro)
    payload = {"suite": "layerwise", "cost_target": COST_TARGET, "pattern": PATTERN,
               "provenance": {"git": provenance}, "models": collected}
    figure_names = [f"layerwise-{fig.name}.png" for _, _, fig in doc.figures()]
    return write_report(doc, dest, "report", figure_names, "layerwise_results.json", payload)


def main(argv=None) -> int:
    """``python -m prunelab.reproductions.layerwise OUTDIR [--dest DIR]`` (default DIR: OUTDIR/layerwise)."""
    return results_main(argv, "layerwise", "layerwise", write_layerwise_report,
                        "wrote {markdown}, {html}, {json} and {figures} figures")
