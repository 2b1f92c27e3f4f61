"""Reports of a result store: a self-contained HTML page and a Markdown file.

``prunelab report OUTDIR`` reads ``OUTDIR/results.sqlite`` and writes ``OUTDIR/report.html`` (tables,
figures as PNG ``data:`` URIs, inline CSS, no script and no external reference: it opens offline and
can be mailed as one file) and ``OUTDIR/report.md`` (figures in ``OUTDIR/figures/*.png``), both
through :func:`prunelab.utils.render.write_document`.

For every (data set, model) pair: the results table (mean ± sample std over seeds, per method
and target), accuracy vs compression ratio (log x, one line per method, error bars; before and
after retraining), accuracy vs theoretical speedup, wall time per phase per method (stacked
bars), and method traces (per round / per epoch: PQ Index, density, sparsity, accuracy ...).
Accuracies are on the test split; the validation split (the only one used for selection) has its own column.
A group of language models on token data is scored by bits per byte (lower is better) and perplexity
instead of top-1 (:mod:`prunelab.harness.report_scores`).
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

from prunelab.errors import ConfigError
from prunelab.harness import suites
from prunelab.harness.report_scores import TOP1, GroupScore, group_score, is_language_model_run
from prunelab.harness.store import FILENAME, Store
from prunelab.utils.figures import new_figure, png_bytes
from prunelab.utils.render import Document, Figure, Paragraph, Section, Table, write_document

PHASE_ORDER = ("prune", "train", "retrain", "other")
_X_KEYS = ("round", "epoch", "step", "iteration", "level")
_PREFERRED_Y = ("pqi", "pq_index", "density", "sparsity", "compression", "compression_ratio", "val_top1", "test_top1",
                "top1", "transition_fraction", "threshold", "tau", "train_loss")
# Bookkeeping, not behaviour: never drawn as a trace panel.
_SKIP_Y = ("lr", "kept", "total", "pruned", "best_epoch", "n", "partial")
MAX_TRACE_KEYS = 4


# --------------------------------------------------------------------------- aggregation

def _mean_std(values):
    vals = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]
    if not vals:
        return None, None, 0
    mean = statistics.fmean(vals)
    std = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return mean, std, len(vals)


def model_name(spec) -> str:
    """The model as reports name it: its name, with its arguments when it has any
    (``cnn(batch_norm=false, widths=[8, 16])``), so differently built models never share a table."""
    kwargs = getattr(spec, "model_kwargs", None) or {}
    if not kwargs:
        return spec.model
    return f"{spec.model}(" + ", ".join(f"{k}={json.dumps(v)}" for k, v in sorted(kwargs.items())) + ")"


def group_results(results) -> dict:
    """``{(dataset, model name): {label: {target: [RunResult, ...]}}}``, labels in first-seen order;
    the model name includes its arguments (:func:`model_name`)."""
    groups: dict = {}
    for r in results:
        g = groups.setdefault((r.spec.dataset, model_name(r.spec)), {})
        g.setdefault(r.label, {}).setdefault(float(r.spec.target), []).append(r)
    for g in groups.values():
        for by_target in g.values():
            for runs in by_target.values():
                runs.sort(key=lambda r: r.spec.seed)
    return groups


def aggregate(runs, key: str) -> tuple:
    """``(mean, std, n)`` of ``metrics[key]`` over ``runs`` (None-s and non-finite values skipped)."""
    return _mean_std([r.metrics.get(key) for r in runs])


# (header, metric key, kind) of an image group's table; language models: report_scores.BPB.columns
COLUMNS = TOP1.columns


def _fmt(mean, std, n, kind) -> str:
    if mean is None:
        return "–"
    if kind == "pct":
        text = f"{100 * mean:.2f}"
        return text + (f" ± {100 * std:.2f}" if n > 1 else "")
    if kind == "x":
        text = f"{mean:.2f}×"
        return text + (f" ± {std:.2f}" if n > 1 else "")
    if kind in ("bpb", "ppl"):   # bits per byte: 3 decimals; perplexity: 2
        digits = 3 if kind == "bpb" else 2
        return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if n > 1 else "")
    text = f"{mean:.1f}" if mean >= 10 else f"{mean:.2f}"
    return text + (f" ± {std:.2f}" if n > 1 else "")


def table(by_label: dict, num_classes: int | None = None) -> tuple[list[str], list[list[str]]]:
    """Header and rows of one (data set, model) results table (strings, mean ± std over seeds);
    language models on token data get bits per byte and perplexity columns instead of top-1."""
    columns = [c for c in group_score(by_label).columns
               if not (c[1] == "final_test_top5" and (num_classes or 0) <= 5)]
    header = ["method", "target", "seeds"] + [c[0] for c in columns]
    rows = []
    for label, by_target in by_label.items():
        for target in sorted(by_target):
            runs = by_target[target]
            row = [label, f"{target:g}", str(len(runs))]
            row += [_fmt(*aggregate(runs, key), kind) for _, key, kind in columns]
            rows.append(row)
    return header, rows


def dense_line(by_label: dict) -> str:
    """One sentence on the shared dense models of a group (accuracy, training time, cache)."""
    seen = {}
    for by_target in by_label.values():
        for runs in by_target.values():
            for r in runs:
                seen.setdefault(r.spec.seed, r)
    runs = list(seen.values())
    test = aggregate(runs, "dense_test_top1")
    val = aggregate(runs, "dense_val_top1")
    secs = aggregate(runs, "time_dense_train")
    if test[0] is None:
        return "Dense model: no record."
    budget = runs[0].spec.dense
    if any(is_language_model_run(r) for r in runs):
        return (f"Dense model ({len(runs)} seed{'s' if len(runs) > 1 else ''}): test bits per byte "
                f"{_fmt(*aggregate(runs, 'dense_test_bpb'), 'bpb')}, perplexity "
                f"{_fmt(*aggregate(runs, 'dense_test_ppl'), 'ppl')}, val bits per byte "
                f"{_fmt(*aggregate(runs, 'dense_val_bpb'), 'bpb')}, trained in {_fmt(*secs, 's')} s "
                f"(budget {json.dumps(budget, sort_keys=True)}); trained once per seed and cached, every method "
                "starts from it, and its time is not in the per-method times.")
    return (f"Dense model ({len(runs)} seed{'s' if len(runs) > 1 else ''}): test top-1 {_fmt(*test, 'pct')} %, "
            f"val top-1 {_fmt(*val, 'pct')} %, trained in {_fmt(*secs, 's')} s "
            f"(budget {json.dumps(budget, sort_keys=True)}); trained once per seed and cached, every method "
            "starts from it, and its time is not in the per-method times.")


# --------------------------------------------------------------------------- figures

def _series(by_label: dict, x_key: str, y_key: str, scale=100):
    """Per label: sorted lists of (x mean, x std, y mean, y std), y times ``scale``."""
    out = {}
    for label, by_target in by_label.items():
        points = []
        for target in sorted(by_target):
            runs = by_target[target]
            xm, xs, _ = aggregate(runs, x_key)
            ym, ys, _ = aggregate(runs, y_key)
            if xm is not None and ym is not None:
                points.append((xm, xs, scale * ym, scale * ys))
        if points:
            out[label] = sorted(points)
    return out


def _log2_axis(ax):
    from matplotlib.ticker import FuncFormatter

    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}×"))
    ax.grid(True, which="major", alpha=0.3)


def _dense_hline(ax, by_label, score: GroupScore = TOP1):
    runs = [r for bt in by_label.values() for rs in bt.values() for r in rs]
    m, _, _ = aggregate(runs, score.dense)
    if m is not None:
        ax.axhline(score.scale * m, color="0.3", ls="--", lw=1, label="dense")


def _plot_lines(ax, series):
    for i, (label, pts) in enumerate(series.items()):
        xs, _, ys, yerr = zip(*pts)
        # colour cycles every 10 and marker every 8 lines: up to 40 methods stay distinguishable
        ax.errorbar(xs, ys, yerr=yerr, marker="os^vDP*X"[i % 8], ms=4, capsize=3, lw=1.3,
                    ls="-" if i < 10 else "--", label=label)


def fig_accuracy_vs(by_label: dict, x_key: str, xlabel: str, title: str, score: GroupScore = TOP1) -> bytes:
    """Test top-1 (or ``score``'s metric, e.g. bits per byte) against ``x_key`` (log2 x), before
    and after retraining when both exist."""
    before = _series(by_label, x_key, score.pruned, score.scale)
    after = _series(by_label, x_key, score.final, score.scale)
    panels = [("after retraining (final)", after)]
    if before:
        panels.insert(0, ("after pruning, before retraining", before))
    fig = new_figure(5.2 * len(panels) + 2.2, 4.2)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (name, series) in zip(axes, panels):
        _plot_lines(ax, series)
        _dense_hline(ax, by_label, score)
        _log2_axis(ax)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(score.axis)
        ax.set_title(name, fontsize=10)
    # One legend for both panels, outside them: a dozen methods would hide the curves.
    handles, labels = axes[-1].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right upper", fontsize=7)
    fig.suptitle(title, fontsize=11)
    return png_bytes(fig)


def fig_phase_times(by_label: dict, title: str) -> bytes:
    """Mean seconds per phase per method (stacked horizontal bars); dense training noted apart."""
    labels = list(by_label)
    phases = []
    for by_target in by_label.values():
        for runs in by_target.values():
            for r in runs:
                for p in r.phase_times:
                    if p != "dense_train" and p not in phases:
                        phases.append(p)
    phases.sort(key=lambda p: (PHASE_ORDER.index(p) if p in PHASE_ORDER else len(PHASE_ORDER), p))
    fig = new_figure(7.0, 1.2 + 0.45 * len(labels))
    ax = fig.subplots()
    left = [0.0] * len(labels)
    for phase in phases:
        widths = []
        for label in labels:
            runs = [r for rs in by_label[label].values() for r in rs]
            m, _, _ = _mean_std([r.phase_times.get(phase, 0.0) for r in runs])
            widths.append(m or 0.0)
        ax.barh(labels, widths, left=left, label=phase)
        left = [a + b for a, b in zip(left, widths)]
    runs = [r for bt in by_label.values() for rs in bt.values() for r in rs]
    dense, _, _ = aggregate(runs, "time_dense_train")
    ax.invert_yaxis()
    ax.set_xlabel("seconds per run (mean over targets and seeds)")
    note = f"; dense training (shared, once per seed): {dense:.1f} s" if dense is not None else ""
    ax.set_title(f"{title}{note}", fontsize=9)
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(True, axis="x", alpha=0.3)
    return png_bytes(fig)


def _numeric_keys(rows: list[dict]) -> list[str]:
    keys = []
    for row in rows:
        for k, v in row.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in keys \
                    and k not in _SKIP_Y and not k.startswith("seconds"):
                keys.append(k)
    return keys


def trace_plan(by_label: dict) -> list[tuple[str, str, str, list[str]]]:
    """Which method traces to draw: ``(label, trace name, x key, y keys)``.

    Every trace except the harness's own ``retrain`` history (drawn by :func:`fig_retrain`).
    """
    plan = []
    for label, by_target in by_label.items():
        names = []
        for runs in by_target.values():
            for r in runs:
                names += [n for n in r.traces if n not in names]
        for name in names:
            if name == "retrain":
                continue
            rows = [row for rs in by_target.values() for r in rs for row in r.traces.get(name, [])]
            keys = _numeric_keys(rows)
            x = next((k for k in _X_KEYS if k in keys), None)
            ys = [k for k in _PREFERRED_Y if k in keys and k != x]
            ys += [k for k in keys if k not in ys and k != x and k not in _X_KEYS]
            if ys:
                plan.append((label, name, x or "", ys[:MAX_TRACE_KEYS]))
    return plan


def fig_retrain(by_label: dict, title: str, score: GroupScore = TOP1) -> bytes | None:
    """Validation top-1 (``score.retrain_key``) per retraining epoch: a panel per one-shot method,
    a line per target."""
    from matplotlib.ticker import MaxNLocator

    labels = [label for label, bt in by_label.items() if any(r.traces.get("retrain") for rs in bt.values() for r in rs)]
    if not labels:
        return None
    cols = min(4, len(labels))
    rows = math.ceil(len(labels) / cols)
    fig = new_figure(3.2 * cols + 0.6, 2.6 * rows + 0.6)
    axes = fig.subplots(rows, cols, squeeze=False).flatten()
    for ax, label in zip(axes, labels):
        for target in sorted(by_label[label]):
            trace = by_label[label][target][0].traces.get("retrain", [])
            pts = [(row.get("epoch", i + 1), score.scale * row[score.retrain_key]) for i, row in enumerate(trace)
                   if isinstance(row.get(score.retrain_key), (int, float))]
            if pts:
                ax.plot(*zip(*pts), marker=".", lw=1.2, label=f"{target:g}")
        ax.set_title(label, fontsize=9)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("retraining epoch", fontsize=8)
        ax.grid(True, alpha=0.3)
    for ax in axes[len(labels):]:
        ax.set_visible(False)
    axes[0].set_ylabel(score.retrain_axis)
    axes[0].legend(fontsize=6, title="target", title_fontsize=6)
    fig.suptitle(f"{title}: retraining with the mask fixed", fontsize=10)
    return png_bytes(fig)


def fig_trace(by_label: dict, label: str, name: str, x_key: str, y_keys: list[str], title: str) -> bytes:
    """One trace of one method: a panel per quantity, a line per target (lowest seed)."""
    fig = new_figure(3.4 * len(y_keys) + 0.8, 3.2)
    axes = fig.subplots(1, len(y_keys), squeeze=False)[0]
    for target in sorted(by_label[label]):
        runs = by_label[label][target]
        rows = runs[0].traces.get(name, [])
        if not rows:
            continue
        xs = [row.get(x_key, i) if x_key else i for i, row in enumerate(rows)]
        for ax, key in zip(axes, y_keys):
            pts = [(x, row[key]) for x, row in zip(xs, rows) if isinstance(row.get(key), (int, float))]
            if pts:
                ax.plot(*zip(*pts), marker=".", lw=1.2, label=f"target {target:g}")
    from matplotlib.ticker import MaxNLocator

    for ax, key in zip(axes, y_keys):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel(x_key or "index")
        ax.set_title(key, fontsize=10)
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"{title}: {label}, trace '{name}'", fontsize=10)
    return png_bytes(fig)


# --------------------------------------------------------------------------- writing

def build(store: Store, title: str) -> Document:
    """Everything the report shows, as a document: intro lines, then a section per (data set, model)."""
    results = store.results()
    sections = [_group_section(f"{dataset} / {model}", by_label)
                for (dataset, model), by_label in group_results(results).items()]
    meta = {"runs": len(results), "git": sorted({str(r.info.get("git_sha")) for r in results}),
            "torch": sorted({str(r.info.get("torch")) for r in results}), "failures": _failures(store.outdir),
            "suites": store.suites(), "integrity": store.check(),
            "language_models": any(is_language_model_run(r) for r in results)}
    return Document(title, _intro_lines(meta), sections)


def _group_section(title: str, by_label: dict) -> Section:
    """One (data set, model) group: the dense model, the results table, what was counted, the figures."""
    any_run = next(r for bt in by_label.values() for rs in bt.values() for r in rs)
    header, rows = table(by_label, any_run.metrics.get("num_classes"))
    score = group_score(by_label)
    what = "accuracy" if score is TOP1 else "bits per byte"
    figures = [
        Figure(f"{what} vs compression", fig_accuracy_vs(by_label, "compression_ratio",
                                                         "compression ratio of prunable weights (log scale)", title, score),
               f"{score.caption} against the achieved compression ratio (prunable weights / non-zero ones); "
               "error bars: sample std over seeds; dashed: the dense model."),
        Figure(f"{what} vs theoretical speedup", fig_accuracy_vs(by_label, "theoretical_speedup",
                                                                 "theoretical speedup = FLOPs / non-zero FLOPs (log scale)",
                                                                 title, score),
               f"{score.caption} against the theoretical speedup (multiply-accumulates of Linear/Conv layers)."),
        Figure("time per phase", fig_phase_times(by_label, title),
               "Wall time per phase per method, mean over targets and seeds (dense training excluded: shared)."),
    ]
    retrain_png = fig_retrain(by_label, title, score)
    if retrain_png is not None:
        figures.append(Figure("retraining curves", retrain_png,
                              f"Validation {'top-1' if score is TOP1 else 'bits per byte'} per retraining epoch "
                              "(lowest seed), one line per target sparsity."))
    for label, name, x_key, y_keys in trace_plan(by_label):
        figures.append(Figure(f"trace {label} {name}", fig_trace(by_label, label, name, x_key, y_keys, title),
                              f"Method trace '{name}' of {label}: one line per target (lowest seed)."))
    counted = f"Counted: {any_run.info.get('counted', '')}. Data: {any_run.info.get('data_source', '')}."
    return Section(title, [Paragraph(dense_line(by_label)), Table(header, rows), Paragraph(counted), *figures])


def _failures(outdir: Path) -> int:
    """How many run attempts ``OUTDIR/errors.log`` records (one ``=== `` header line each)."""
    path = Path(outdir) / "errors.log"
    text = path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""
    return sum(1 for line in text.splitlines() if line.startswith("=== "))


def _intro_lines(meta: dict) -> list[str]:
    lines = [f"{meta['runs']} completed runs. Accuracies in %, test split unless marked val; mean ± sample std "
             "over seeds; 'target' is the requested sparsity, 'sparsity' the achieved one (prunable weights). "
             "Compression = prunable weights / non-zero ones; speedup = dense FLOPs / non-zero FLOPs."]
    for name, info in meta["suites"].items():
        text = ". ".join(t.strip().rstrip(".") for t in (info.get("description", ""), info.get("notes", "")) if t.strip())
        lines.append(f"Suite `{name}`: {text}.")
    lines.append(f"prunelab git {', '.join(meta['git'])}; torch {', '.join(meta['torch'])}.")
    if meta.get("language_models"):
        lines.append("Language models on token data are scored by bits per byte (bpb, lower is better) and "
                     "perplexity (ppl) of the test split instead of top-1; their top-1 would be per token.")
    if meta["failures"]:
        lines.append(f"{meta['failures']} run attempts failed; see errors.log in the output directory.")
    if meta["integrity"]:
        lines.append("Store integrity problems: " + "; ".join(meta["integrity"]))
    return lines


def text_table(store: Store) -> str:
    """A plain-text summary for the terminal: final test top-1 (bits per byte for language models
    on token data) per method and target.

    A ``*`` marks cells whose achieved sparsity fell short of the target by more than 0.5 points
    (methods that set their own sparsity); the report's table gives the achieved values.
    """
    lines = []
    for (dataset, model), by_label in group_results(store.results()).items():
        targets = sorted({t for bt in by_label.values() for t in bt})
        score = group_score(by_label)
        lines.append(f"{dataset} / {model}: {score.terminal} by target sparsity; " + dense_line(by_label).split(";")[0])
        width = max([len(label) for label in by_label] + [6])
        lines.append(f"{'method':<{width}} " + " ".join(f"{t:>13g}" for t in targets))
        short = False
        for label, by_target in by_label.items():
            cells = []
            for t in targets:
                runs = by_target.get(t, [])
                m, s, n = aggregate(runs, score.final)
                reached, _, _ = aggregate(runs, "sparsity")
                mark = "*" if reached is not None and reached < t - 0.005 else " "
                short |= mark == "*"
                cells.append(f"{'–' if m is None else _fmt(m, s, n, score.kind):>12}{mark}")
            lines.append(f"{label:<{width}} " + " ".join(cells))
        if short:
            lines.append("* achieved sparsity below the target (see report.md for the achieved values)")
        lines.append("")
    return "\n".join(lines)


def write_report(outdir, title: str | None = None) -> tuple[Path, Path]:
    """Write ``report.html``, ``report.md`` and ``figures/*.png`` into ``outdir``.

    Args:
        outdir: an output directory holding ``results.sqlite``.
        title: page title (default: "prunelab report: <directory name>").

    Returns:
        ``(html_path, markdown_path)``.

    Raises:
        ConfigError: no result store in ``outdir``, or it holds no completed run.
    """
    outdir = Path(outdir)
    if not (outdir / FILENAME).is_file():
        raise ConfigError(f"{outdir} holds no {FILENAME}; run `prunelab bench --out {outdir}` first")
    with Store(outdir) as store:
        if len(store) == 0:
            raise ConfigError(f"{outdir / FILENAME} holds no completed run yet; nothing to report")
        document = build(store, title or f"prunelab report: {outdir.resolve().name}")
        suite_names = list(store.suites())
    paths = write_document(document, outdir, name="report")
    write_suite_reports(outdir, suite_names)
    return paths["html"], paths["markdown"]


def write_suite_reports(outdir, names) -> list[dict]:
    """Call the own report writer (``Suite.report``) of every registered suite among ``names``.

    ``write_report`` calls it with the suites recorded in the store, so ``prunelab bench`` and
    ``prunelab report`` both write, e.g., the ``pitas`` suite's report beside the generic one.

    Returns:
        What each writer returned (the paths it wrote), in order.
    """
    written = []
    for name in names:
        if name in suites.registry:
            suite = suites.get_suite(name)
            if suite.report is not None:
                written.append(suite.report(Path(outdir)))
    return written

