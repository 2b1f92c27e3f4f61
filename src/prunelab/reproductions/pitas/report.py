"""The ``pitas`` suite's own report: ``report.md`` (figures beside it), ``report.html`` (one
self-contained page) and ``pitas_results.json``, rendered through :mod:`prunelab.utils.render`."""

from __future__ import annotations

import json
from pathlib import Path

from prunelab.reproductions.common import pct, open_suite_store, results_main, write_report
from prunelab.reproductions.pitas.bench import find_bench_json
from prunelab.reproductions.pitas.claims import check_claims, claims_text
from prunelab.reproductions.pitas.collect import collect
from prunelab.reproductions.pitas.figures import fig_accuracy, fig_time_to_target, fig_times
from prunelab.reproductions.pitas.protocol import GAPS, RETRAIN_TARGET
from prunelab.reproductions.pitas.tables import (
    secs, table_accuracy, table_bench, table_time_to_target, table_times,
)
from prunelab.utils.render import Document, Figure, Paragraph, Section, Table

__all__ = ["report_document", "write_pitas_report", "main"]

TITLE = "Pitas et al. (2019) reproduction: hard thresholding vs FeTa, Net-Trim and L-OBS"


def _section(title: str, paragraphs: list[str], tables: list[Table], figures: list[Figure]) -> Section:
    return Section(title, [Paragraph(p) for p in paragraphs] + tables + figures)


def report_document(collected: dict, claims: dict, bench: dict | None, bench_path, intro: list[str]) -> Document:
    """The report's content: four sections of paragraphs, tables and figures (PNG bytes)."""
    p1 = ["Every method prunes the same trained dense model to the target; test top-1 right after pruning, no "
          "retraining. Hard thresholding, FeTa, Net-Trim and L-OBS prune every layer but the classifier (the target "
          "applies to each); global magnitude ranks all prunable weights, the classifier included. 'sparsity' = "
          "achieved sparsity of all prunable weights / of all but the last layer. Grey: the authors' numbers "
          "(FC, Fashion-MNIST; from the result files of their code release)."]
    p2 = ["Wall seconds of the prune phase of every run (all pruned layers, capture of the calibration activations "
          "included), one CPU thread."]
    p3 = ["Each method's 90 % network is retrained with its mask fixed (the dense recipe); after every epoch the "
          "validation top-1 is compared with the dense model's. Time = prune time + retraining wall time up to the end "
          "of the first epoch within the gap (epoch 0: already after pruning); each epoch's time includes its "
          "validation pass. The decision reads the validation split (5,000 training images held out); the authors "
          "read test."]
    t1, t2, t3 = [], [], []
    for model, info in collected.items():
        dense = info["dense"]
        line = (f"{model} on {info['dataset']}: dense test top-1 {pct(dense['test_top1'])} %, val top-1 "
                f"{pct(dense['val_top1'])} %, trained in {secs(dense['seconds'])} s "
                f"(budget {json.dumps(dense['budget'], sort_keys=True)}).")
        t1.append(Table(*table_accuracy(info), caption=line))
        t2.append(Table(*table_times(info), caption=f"{model}: prune seconds per target."))
        header, rows = table_time_to_target(info)
        if rows:
            budget = next(m["retrain"]["budget"] for m in info["methods"].values() if m["retrain"])
            t3.append(Table(header, rows, caption=f"{model}: retraining budget {json.dumps(budget, sort_keys=True)}; "
                                                  f"dense val top-1 {pct(dense['val_top1'])} %."))
    f1 = [Figure("accuracy-without-retraining", fig_accuracy(collected), "Test top-1 right after pruning; dashed: dense.")]
    f2 = [Figure("prune-time", fig_times(collected, bench),
                 "Prune wall time per run (log) and, right, the one-layer benchmark against d_in (log-log; "
                 "slopes between successive widths; dotted: skipped runs, estimated).")]
    if bench:
        p2.append(f"Growth with the input width: `benchmarks/bench_layerwise.py` (one ReLU layer, N={bench.get('n')} "
                  f"rows, d_out={bench.get('d_out')}, sparsity {bench.get('sparsity')}, one thread), read from "
                  f"`{bench_path}`.")
        t2.append(Table(*table_bench(bench), caption="One-layer benchmark: wall seconds per configuration and input width."))
    else:
        p2.append("No bench_layerwise.json found: run `python benchmarks/bench_layerwise.py > "
                  "OUTDIR/bench_layerwise.json` and rewrite the report for the width benchmark.")
    f3 = []
    if t3:
        f3.append(Figure("time-to-target", fig_time_to_target(collected),
                         f"Validation top-1 minus dense, against prune + retraining time; dotted: the gaps; "
                         f"points more than {max(GAPS) + 3:g} points below dense are drawn at −{max(GAPS) + 3:g} "
                         "(the table has their values)."))
    return Document(TITLE, intro, [
        _section("1. Accuracy without retraining vs sparsity", p1, t1, f1),
        _section("2. Prune time", p2, t2, f2),
        _section(f"3. Total time to recover at {RETRAIN_TARGET:.0%} sparsity", p3, t3, f3),
        _section("The paper's claims", claims_text(claims), [], []),
    ])


def write_pitas_report(outdir, dest=None, bench_json=None, results=None) -> dict:
    """Write the suite's report: ``report.md`` (figures as PNGs beside it), ``report.html`` (figures
    embedded) and ``pitas_results.json``.

    Args:
        outdir: the bench output directory (holding ``results.sqlite``), or, with ``results``, any
            folder (only for the default ``dest`` and the benchmark JSON lookup).
        dest: where to write (default ``OUTDIR/pitas``).
        bench_json: the ``bench_layerwise.py`` JSON (default: :func:`find_bench_json`).
        results: the run results to report (default: every run of the store).

    Returns:
        ``{"markdown", "html", "json", "figures": [paths]}``.

    Raises:
        ConfigError: no result store, or no one-shot run in it.
    """
    outdir = Path(outdir)
    dest, results, suites, collected = open_suite_store(outdir, outdir / "pitas" if dest is None else dest, "pitas",
                                                        collect, lambda c: not c, "one-shot", results)
    bench_path = find_bench_json(outdir, bench_json)
    bench = json.loads(bench_path.read_text(encoding="utf-8")) if bench_path else None
    claims = check_claims(collected, bench)
    provenance = sorted({str(r.info.get("git_sha")) for r in results})
    intro = [f"{sum(len(m['points']) for i in collected.values() for m in i['methods'].values())} runs, "
             f"prunelab git {', '.join(provenance)}; torch "
             f"{', '.join(sorted({str(r.info.get('torch')) for r in results}))}; threads "
             f"{', '.join(sorted({str(r.info.get('threads')) for r in results}))}. Accuracies in %."]
    for name, info in suites.items():
        intro.append(f"Suite `{name}`: {info.get('description', '')}. {info.get('notes', '')}")
    doc = report_document(collected, claims, bench, bench_path, intro)
    payload = {"suite": "pitas", "gaps_points": list(GAPS), "retrain_target": RETRAIN_TARGET,
               "provenance": {"git": provenance}, "bench_json": str(bench_path) if bench_path else None,
               "models": collected, "claims": claims}
    figure_names = [f"pitas-{fig.name}.png" for _, _, fig in doc.figures()]
    return write_report(doc, dest, "report", figure_names, "pitas_results.json", payload)


def main(argv=None) -> int:
    """``python -m prunelab.reproductions.pitas OUTDIR [--dest DIR]`` (default DIR: OUTDIR/pitas)."""
    return results_main(argv, "pitas", "pitas", write_pitas_report,
                        "wrote {markdown}, {html}, {json} and {figures} figures",
                        {"--bench-json": "bench_layerwise.py output (default: see find_bench_json)"})
