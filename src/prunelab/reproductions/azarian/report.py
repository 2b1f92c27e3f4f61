"""The ``ltp`` suite's own report: ``report.md`` / ``report.html`` (the table per model, the
acceptance checks, the trail and the BN study), ``figures/`` and ``ltp_results.json``."""

from __future__ import annotations

from prunelab.reproductions.azarian.checks import check_acceptance, mean, mean_sd
from prunelab.reproductions.azarian.collect import METHODS, collect
from prunelab.reproductions.azarian.figures import compression_of, draw_figures, fmt_times
from prunelab.reproductions.azarian.plans import BN_FINETUNE_EPOCHS, BN_TARGET
from prunelab.reproductions.common import open_suite_store, pct, provenance, results_main, write_report
from prunelab.utils.render import Document, Figure, Paragraph, Section, Table

__all__ = ["report_document", "write_ltp_results", "main"]

TITLE = "LTP vs GMP vs magnitude + retraining (`prunelab bench --suite ltp`)"
TABLE_HEADER = ["compression", "LTP", "GMP", "magnitude + retrain", "Δ LTP − GMP", "LTP − dense",
                "LTP: λ, epochs thresholds / fine-tune"]
BN_HEADER = ["BN", "penalty", "λ", "compression per epoch", "val top-1 per epoch (%)", "late growth",
             "keeps increasing", "picked, after fine-tune"]


def _delta(x):
    return "–" if x is None else f"{100 * x:+.2f}"


def _picked(run: dict) -> str:
    if run.get("picked_compression") is None:
        return "–"
    return (f"{fmt_times(run['picked_compression'])} (epoch {run.get('picked_epoch')}): "
            f"{pct(run.get('final_val_top1'), 1)} %")


def _method_cell(row: dict, method: str, several: bool) -> str:
    run = row.get(method)
    if run is None:
        return "–"
    runs = list(row.get("by_seed", {}).get(method, {}).values()) if several else []
    comps = [r["compression_ratio"] for r in runs] or [run["compression_ratio"]]
    off = [x for x in comps if x is not None and abs(x / row["target_compression"] - 1) >= 0.02]
    if len(runs) > 1:
        test = mean_sd([r["test_top1"] for r in runs])
        cell = f"{pct(test[0])} ± {pct(test[1])} ({pct(mean([r['val_top1'] for r in runs]))}), n={len(runs)}"
    else:
        cell = f"{pct(run['final_test_top1'])} ({pct(run['final_val_top1'])})"
    return cell + (f" at {fmt_times(min(off))}" if off else "")


def _model_section(model: str, entry: dict, checks: dict) -> Section:
    """A model's table (test top-1 per method and target), its seeds and its trail runs."""
    d, b = entry["dense_budget"], entry["budget"]
    intro = (f"Dense: {d.get('epochs')} epochs ({d.get('optimizer')}, lr {d.get('lr')}, {d.get('schedule', 'constant')}), "
             f"test top-1 **{pct(entry['dense']['test_top1'])} %** (validation {pct(entry['dense']['val_top1'])} %). "
             f"Every method: **{b.get('epochs')} epochs** from that dense model (retraining / fine-tune recipe: "
             f"{b.get('optimizer')}, lr {b.get('lr')}, {b.get('schedule', 'constant')}, batch {b.get('batch_size', 128)}"
             + (f", weight decay {b['weight_decay']:g}" if b.get("weight_decay") else "") + "). "
             "Test top-1 (%), validation top-1 in parentheses; Δ = LTP − GMP.")
    crow = {r["target"]: r for r in checks["models"].get(model, {}).get("rows", [])}
    if any(c.get("several_seeds") for c in crow.values()):
        dense_seeds = entry.get("dense_by_seed", {})
        dm = mean_sd([v["test_top1"] for v in dense_seeds.values()])
        intro += (f" Dense test top-1 over seeds {', '.join(map(str, sorted(dense_seeds)))}: {pct(dm[0])} ± "
                  f"{pct(dm[1])} %. Rows with several seeds (each seed its own dense model) give the mean ± sample standard "
                  "deviation of test top-1 over the seeds, the mean validation top-1, and Δ on the means; "
                  "the λ / epochs column is the lowest seed's.")
    rows = []
    for row in entry["rows"]:
        c = crow.get(row["target"], {})
        several = c.get("several_seeds")
        ltp = row.get("ltp") or {}
        how = "–" if not ltp else (f"λ={ltp['hparams'].get('penalty_weight', 3.0):g}, {ltp.get('ltp_epochs')} / "
                                   f"{ltp.get('finetune_epochs')}" + ("" if ltp.get("target_reached", True)
                                                                      else " (target not reached)"))
        vs_gmp = c.get("ltp_minus_gmp_mean") if several else c.get("ltp_minus_gmp")
        vs_dense = c.get("ltp_minus_dense_mean") if several else c.get("ltp_minus_dense")
        rows.append([fmt_times(row["target_compression"])] + [_method_cell(row, m, several) for m in METHODS]
                    + [_delta(vs_gmp), _delta(vs_dense), how])
    blocks = [Paragraph(intro), Table(TABLE_HEADER, rows)]
    for row in entry["rows"]:
        c = crow.get(row["target"], {})
        if len(c.get("seeds", [])) > 1:
            by = row["by_seed"]
            per = "; ".join(
                f"seed {sd}: dense {pct(by['ltp'][sd]['dense_test_top1'])}, LTP {pct(by['ltp'][sd]['test_top1'])}, "
                f"GMP {pct(by.get('gmp', {}).get(sd, {}).get('test_top1'))}, "
                f"magnitude {pct(by.get('magnitude', {}).get(sd, {}).get('test_top1'))}" for sd in c["seeds"])
            blocks.append(Paragraph(
                f"Seeds {', '.join(map(str, c['seeds']))} at {fmt_times(row['target_compression'])} (each seed its own "
                f"dense model), test top-1 (%): {per}. Mean LTP − dense {_delta(c['ltp_minus_dense_mean'])}, "
                f"mean LTP − GMP {_delta(c['ltp_minus_gmp_mean'])} points."))
    for run in entry["trail_runs"]:
        comp = [compression_of(e["sparsity"]) for e in run["trail"]]
        blocks.append(Paragraph(
            f"Trail run (λ={run['hparams'].get('penalty_weight', 3.0):g}, thresholds learning for "
            f"{run.get('ltp_epochs')} epochs, no stop at the target): compression per epoch "
            + ", ".join(fmt_times(c) for c in comp) + "; validation top-1 per epoch "
            + ", ".join(pct(e["val_top1"], 1) for e in run["trail"]) + " %."))
    return Section(model, blocks)


def _checks_section(checks: dict, trails: list[Figure]) -> Section:
    """One line per acceptance criterion, then the trail figures."""
    lines = []
    head = checks["headline"]
    if head["holds"] is None:
        lines.append(f"- {head['model']} at the headline target: no LTP run")
    else:
        mean_text = "" if head.get("ltp_minus_dense_mean") is None else (
            f"mean over seeds {', '.join(map(str, head['seeds']))}: {_delta(head['ltp_minus_dense_mean'])}, ")
        lines.append(f"- {head['model']} at {fmt_times(1 / (1 - head['target']))}: LTP − dense = {mean_text}seed "
                     f"{min(head['seeds'] or [0])}: {_delta(head['ltp_minus_dense'])} points (needs ≥ "
                     f"{-100 * checks['gap_to_dense']:.1f}{' on the mean' if mean_text else ''}): "
                     f"**{'holds' if head['holds'] else 'MISSED'}**")
    for model, m in checks["models"].items():
        parts = [f"{fmt_times(r['target_compression'])}: "
                 + (f"{_delta(r['ltp_minus_gmp_mean'])} (mean of {len(r['seeds'])} seeds)" if r.get("several_seeds")
                    else _delta(r["ltp_minus_gmp"])) for r in m["rows"]]
        verdict = {True: "holds", False: "MISSED", None: "not measured"}[m["ltp_within_gmp_everywhere"]]
        lines.append(f"- {model}: LTP − GMP " + ", ".join(parts) + f" points (needs ≥ {-100 * checks['gap_to_gmp']:.1f} "
                     f"at every target): **{verdict}**; the largest LTP compression within "
                     f"{100 * checks['gap_to_dense']:.0f} point of dense: {fmt_times(m['max_compression_within_dense'])}")
    return Section("Acceptance checks (test split)", [Paragraph(line) for line in lines] + trails)


def _bn_section(collected: dict, checks: dict, figures: list[Figure]) -> Section:
    """The batch-norm study: compression and accuracy per epoch for every penalty, with and without BN."""
    run0 = collected["bn_study"][0]
    intro = (f"LTP's thresholding on `cnn` widths {run0.get('widths')} with the L0 term, or with L1 / L2 penalties on "
             f"the weights instead (thresholds then learn from the task loss alone), {run0.get('ltp_epochs')} epochs of "
             "thresholds each from the dense model, no stop"
             + (f", then {run0['finetune_epochs']} fine-tune epoch(s) of the picked network"
                if run0.get("finetune_epochs") else "") + "; the same cnn with batch-norm after every conv and "
             "without (`batch_norm=False`). Compression of the hard mask after each epoch (validation top-1):")
    growth = {(g["batch_norm"], g["penalty"], g["penalty_weight"]): g for g in checks["bn_study"]}
    rows = []
    for run in collected["bn_study"]:
        g = growth.get((run["batch_norm"], run["penalty"], run["penalty_weight"]), {})
        rows.append(["yes" if run["batch_norm"] else "no", run["penalty"].upper(), f"{run['penalty_weight']:g}",
                     " → ".join(fmt_times(compression_of(e["sparsity"])) for e in run["trail"]),
                     " / ".join(pct(e["val_top1"], 1) for e in run["trail"]),
                     "–" if g.get("late_growth") is None else f"{g['late_growth']:.2f}×",
                     {True: "yes", False: "no", None: "–"}[g.get("keeps_increasing")], _picked(run)])
    note = ("Late growth: final compression over the compression halfway through; \"keeps increasing\": late "
            "growth ≥ 1.1× and compression rising (> 1 %) in at least half of the epochs. The per-epoch "
            "accuracies are of the hard-masked trail networks as they come (batch-norm statistics "
            "re-estimated, no fine-tuning); \"picked, after fine-tune\": the first trail network at ≥ "
            f"{fmt_times(1 / (1 - BN_TARGET))} (or the most compressed one), its epoch, and its validation top-1 after "
            f"{BN_FINETUNE_EPOCHS} epoch of fine-tuning with the mask fixed.")
    return Section("Batch-norm study", [Paragraph(intro), Table(BN_HEADER, rows), Paragraph(note)] + figures)


def report_document(collected: dict, checks: dict, figures=(), notes: str = "") -> Document:
    """The suite's report: the table per model, the acceptance checks, the trail and the BN study.

    Args:
        collected: :func:`~prunelab.reproductions.azarian.collect.collect`'s output.
        checks: :func:`~prunelab.reproductions.azarian.checks.check_acceptance`'s output.
        figures: ``(file name, PNG bytes)`` pairs of
            :func:`~prunelab.reproductions.azarian.figures.draw_figures`.
        notes: the suite's notes (the report's intro).

    Returns:
        The :class:`~prunelab.utils.render.Document`; its figures keep the order of ``figures``.
    """
    trails = [Figure("trail", png, f"{name.removeprefix('trail-').removesuffix('.png')}: validation top-1 of the "
                     "hard-masked network against its compression, per epoch")
              for name, png in figures if name.startswith("trail-")]
    bn = [Figure("BN study", png, "Compression and validation top-1 per epoch, with batch-norm (left) and without "
                 "(right)") for name, png in figures if name == "bn-study.png"]
    sections = [_model_section(model, entry, checks) for model, entry in collected["models"].items()]
    sections.append(_checks_section(checks, trails))
    if collected["bn_study"]:
        sections.append(_bn_section(collected, checks, bn))
    return Document(TITLE, [notes] if notes else [], sections)


def write_ltp_results(outdir, dest=None) -> dict:
    """Write ``report.md``, ``report.html``, ``figures/*.png`` and ``ltp_results.json`` for a ``--suite ltp`` store.

    Args:
        outdir: the bench output directory (holding ``results.sqlite``).
        dest: where to write (default ``outdir``); figures go to ``dest/figures``.

    Returns:
        ``{"json", "report" (the Markdown), "markdown", "html", "figures": [paths]}``.

    Raises:
        ConfigError: no result store in ``outdir``, or no LTP/GMP/magnitude run in it.
    """
    dest, results, suites, collected = open_suite_store(
        outdir, dest, "ltp", collect, lambda c: not c["models"] and not c["bn_study"], "LTP, GMP or magnitude")
    checks = check_acceptance(collected)
    figures = draw_figures(collected)
    doc = report_document(collected, checks, figures, suites.get("ltp", {}).get("notes", ""))
    payload = {"suite": "ltp", "provenance": provenance(results, METHODS, ("git_sha", "torch", "threads", "data_source")),
               "models": collected["models"], "bn_study": collected["bn_study"], "checks": checks}
    # draw_figures gives the trails, then the BN study: the document's order
    paths = write_report(doc, dest, "report", [name for name, _ in figures], "ltp_results.json", payload)
    return {**paths, "report": paths["markdown"]}


def main(argv=None) -> int:
    """``python -m prunelab.reproductions.azarian OUTDIR [--dest DIR]``: write the suite's report, figures and JSON."""
    return results_main(argv, "azarian", "ltp", write_ltp_results, "wrote {report}, {json} and {figures} figures")
