"""The ``pqi`` suite's own report: ``pqi_summary.md`` / ``.html`` (final and per-round tables, the
claim checks, the figures), ``figures/`` and ``pqi_results.json``."""

from __future__ import annotations

from prunelab.reproductions.common import open_suite_store, pct, provenance, results_main, write_report
from prunelab.reproductions.diao.claims import check_claims, claims_text
from prunelab.reproductions.diao.collect import PQ_PAIRS, SWING_TOLERANCE, collect
from prunelab.reproductions.diao.figures import draw_figures
from prunelab.utils.render import Document, Figure, Paragraph, Section, Table

__all__ = ["summary_document", "write_pqi_results", "main"]

TITLE = "PQ Index and SAP (Diao et al. 2023): per-round tables and the paper's claims"
SUMMARY_HEADER = ["schedule", "rounds", "final density %", "final test top-1 %", "final val top-1 %",
                  "pruned test top-1 % (last round, before retraining)", "dense test top-1 %", "seconds"]
FIGURE_CAPTIONS = {
    "pqi-density.png": "Density per round; dotted: 0.8^t.",
    "pqi-accuracy-vs-density.png": "Test top-1 against density, after retraining (top) and right after pruning (bottom).",
    "pqi-index.png": "Global PQ Index I_{0.5,1} of the trained weights (top) and test top-1 (bottom) per round.",
}


def _model_section(model: str, runs: dict, checks: dict) -> Section:
    """A model's final numbers, per-layer density, per-round tables and claim lines."""
    rows = []
    for name, run in runs.items():
        first, last = run["rounds"][0], run["rounds"][-1]
        rows.append([name, str(last["round"]), pct(last["density"], 3), pct(last["test_top1"]), pct(last["val_top1"]),
                     pct(last.get("pruned_test_top1")), pct(first["test_top1"]), f"{run['time_total']:.0f}"])
    blocks = [Table(SUMMARY_HEADER, rows)]
    names = list(runs)
    layers = list(dict.fromkeys(k for r in runs.values() for k in r["final_layer_density"]))
    blocks.append(Table(["schedule"] + layers,
                        [[name] + [pct(run["final_layer_density"].get(k), 1) for k in layers] for name, run in runs.items()],
                        caption="final density % per layer:"))
    n = max(len(r["rounds"]) for r in runs.values())
    for key, what, fmt in (("density", "density %", lambda v: pct(v, 2)),
                           ("test_top1", "test top-1 % after retraining", pct),
                           ("pqi_0.5_1", "global I_{0.5,1} of the trained weights", lambda v: "–" if v is None else f"{v:.4f}")):
        per_round = [[str(t)] + [fmt(runs[nm]["rounds"][t].get(key)) if t < len(runs[nm]["rounds"]) else "" for nm in names]
                     for t in range(n)]
        blocks.append(Table(["t"] + names, per_round, caption=f"{what} per round:"))
    blocks += [Paragraph(line) for line in claims_text(checks.get(model, {})).split("\n") if line]
    return Section(model, blocks)


def summary_document(collected: dict, checks: dict, figures=()) -> Document:
    """Tables of the collected runs: final density and accuracy, then per-round density, test top-1
    and I_{0.5,1} per schedule, then one line per claim; the figures (``(file name, PNG)`` pairs) last."""
    sections = [_model_section(model, runs, checks) for model, runs in collected.items()]
    if figures:
        sections.append(Section("Figures", [Figure(name.removesuffix(".png"), png, FIGURE_CAPTIONS.get(name, name))
                                             for name, png in figures]))
    return Document(TITLE, [], sections)


def write_pqi_results(outdir, dest=None) -> dict:
    """Write the suite's figures, ``pqi_results.json`` and ``pqi_summary.md`` / ``pqi_summary.html``.

    Args:
        outdir: where ``prunelab bench --suite pqi`` wrote its ``results.sqlite``.
        dest: the folder of the files written (default ``outdir``), the figures in its ``figures/``.

    Returns:
        The paths written: ``{"json", "summary" (the Markdown), "markdown", "html", "figures": [...]}``.

    Raises:
        ConfigError: ``outdir`` has no result store, or no completed OS, LT or SAP run.
    """
    dest, results, _, collected = open_suite_store(outdir, dest, "pqi", collect, lambda c: not c, "OS/LT/SAP")
    checks = check_claims(collected)
    figures = draw_figures(collected)
    payload = {"suite": "pqi",
               "provenance": provenance(results, ("os", "lt", "sap"), ("git_sha", "torch", "threads", "data_source", "counted")),
               "pq_pairs": {k: list(v) for k, v in PQ_PAIRS.items()}, "swing_tolerance": SWING_TOLERANCE,
               "models": collected, "checks": checks}
    paths = write_report(summary_document(collected, checks, figures), dest, "pqi_summary",
                         [name for name, _ in figures], "pqi_results.json", payload)
    return {**paths, "summary": paths["markdown"]}


def main(argv=None) -> int:
    """``python -m prunelab.reproductions.diao OUTDIR [--dest DIR]``: write the suite's figures and checks."""
    return results_main(argv, "diao", "pqi", write_pqi_results, "wrote {json}, {summary} and {figures} figures")
