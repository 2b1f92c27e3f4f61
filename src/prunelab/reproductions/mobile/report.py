"""The ``mobile`` suite's own report: ``report.md``, ``report.html`` and ``mobile_results.json`` in
``OUTDIR/mobile``: per model the dense model's accuracy and training time, the method ×
compression table, LTP's edge over GMP (computed) and the layers LTP prunes least at 8×."""

from __future__ import annotations

import json
import math
from pathlib import Path

from prunelab.errors import ConfigError
from prunelab.reproductions.common import pct, read_suite_store, results_main, write_report
from prunelab.reproductions.mobile.collect import collect
from prunelab.reproductions.mobile.protocol import LEAST_PRUNED_TARGET, METHODS, MODELS, SEEDS_FULL
from prunelab.reproductions.mobile.specs import mobile_specs
from prunelab.reproductions.mobile.verdict import (
    NOISE_FACTOR, ONE_SEED_MARGIN, kind_sparsity, layer_kind, least_pruned, model_verdicts, overall_verdict,
)
from prunelab.utils.render import Document, Paragraph, Section, Table

__all__ = ["TITLE", "method_table", "verdict_rows", "report_document", "write_mobile_report", "main"]

TITLE = "LTP vs GMP vs magnitude + retraining on mobile networks (`prunelab bench --suite mobile`)"
METHOD_NAMES = {"ltp": "LTP", "gmp": "GMP", "magnitude": "magnitude + retrain"}
#: how many least-pruned layers the report names per model.
LEAST_COUNT = 5


def times(target: float) -> str:
    """A target sparsity as its compression, ``0.875`` → ``"8×"``."""
    c = 1.0 / (1.0 - target)
    return f"{c:.0f}×" if abs(c - round(c)) < 1e-6 else f"{c:.1f}×"


def _delta(x) -> str:
    return "–" if x is None else f"{100 * x:+.2f}"


def _mean_sd(values: list) -> tuple:
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    mean = sum(values) / len(values)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else None
    return mean, sd


def _score(runs: list) -> str:
    """Test top-1 of one seed, or mean ± sd over several, in %."""
    mean, sd = _mean_sd([r["test_top1"] for r in runs])
    if len(runs) < 2:
        return pct(mean)
    return f"{pct(mean)} ± {pct(sd)} (n={len(runs)})"


def method_table(entry: dict, seconds: bool = False) -> tuple[list, list]:
    """A model's table: a row per method, a column per compression.

    Args:
        entry: one model of :func:`~prunelab.reproductions.mobile.collect.collect`'s output.
        seconds: the cells give the mean wall seconds of the runs instead of test top-1.

    Returns:
        ``(header, rows)``; test top-1 cells are ``"85.12"`` (one seed) or ``"85.12 ± 0.30 (n=3)"``,
        with ``" †"`` when an LTP run fell short of the target (the rest pruned by global magnitude)
        and ``" at 11.4×"`` when a run ended 2 % or more off the target compression (the least of them).
    """
    targets = sorted({t for cells in entry["cells"].values() for t in cells})
    rows = []
    for method, cells in entry["cells"].items():
        row = [METHOD_NAMES.get(method, method)]
        for t in targets:
            runs = list(cells.get(t, {}).values())
            if not runs:
                row.append("")
            elif seconds:
                row.append(f"{_mean_sd([r['seconds'] for r in runs])[0]:.0f}")
            else:
                short = any(r.get("target_reached") is False for r in runs)
                # a run whose compression is off the target by 2 % or more says where it ended
                off = [r["compression"] for r in runs
                       if r.get("compression") is not None and abs(r["compression"] * (1 - t) - 1) >= 0.02]
                row.append(_score(runs) + (" †" if short else "") + (f" at {min(off):.1f}×" if off else ""))
        rows.append(row)
    return ["method"] + [times(t) for t in targets], rows


def verdict_rows(verdicts: dict) -> list:
    """Rows of the LTP − GMP table of one model: compression, mean difference (points), the
    per-seed differences, the noise bound and the verdict."""
    rows = []
    for t, v in verdicts["targets"].items():
        per_seed = ", ".join(f"{s}: {_delta(d)}" for s, d in v["differences"].items()) or "–"
        why = " (one seed)" if len(v["seeds"]) == 1 else ""
        rows.append([times(t), _delta(v["mean"]), per_seed, "–" if v["noise"] is None else f"±{100 * v['noise']:.2f}",
                     v["verdict"] + why])
    return rows


def _dense_text(entry: dict) -> str:
    dense, budget = entry["dense"], entry["dense_budget"]
    seed0 = next(iter(dense.values()))
    data = entry["data_kwargs"]
    size = (f"{seed0['params']:,} parameters, {seed0['macs'] / 1e6:.2f} M multiply-accumulates per image"
            if seed0.get("params") and seed0.get("macs") else "")
    recipe = (f"{budget.get('epochs')} epochs ({budget.get('optimizer')}, lr {budget.get('lr')}, "
              f"{budget.get('schedule', 'constant')}, batch {budget.get('batch_size', 128)}) on "
              f"{data.get('limit', 'all')} training images")
    if len(dense) == 1:
        seed, d = next(iter(dense.items()))
        return (f"Dense model ({json.dumps(entry['model_kwargs'], sort_keys=True)}; {size}): test top-1 "
                f"**{pct(d['test_top1'])} %** (validation {pct(d['val_top1'])} %) after {recipe}, trained in "
                f"**{d['seconds']:.0f} s** (seed {seed}).")
    test, test_sd = _mean_sd([d["test_top1"] for d in dense.values()])
    secs = _mean_sd([d["seconds"] for d in dense.values()])[0]
    per = ", ".join(f"seed {s}: {pct(d['test_top1'])} % in {d['seconds']:.0f} s" for s, d in dense.items())
    return (f"Dense models ({json.dumps(entry['model_kwargs'], sort_keys=True)}; {size}): test top-1 "
            f"**{pct(test)} ± {pct(test_sd)} %** over {len(dense)} seeds after {recipe}, trained in "
            f"**{secs:.0f} s** on average ({per}).")


def _layers_blocks(entry: dict, target: float) -> list:
    """The least-pruned layers of LTP at ``target`` (lowest seed), the sparsity per kind and per layer."""
    if not entry["ltp_layers"]:
        return [Paragraph(f"No LTP run at {times(target)}: per-layer sparsity not measured.")]
    seed, layers = next(iter(entry["ltp_layers"].items()))
    least = least_pruned(layers, LEAST_COUNT)
    kinds = kind_sparsity(layers)
    named = ", ".join(f"`{x['name']}` ({x['kind']}, {pct(x['sparsity'], 1)} % pruned, {x['params']:,} weights)"
                      for x in least)
    counts: dict = {}
    for x in least:
        counts[x["kind"]] = counts.get(x["kind"], 0) + 1
    dense = sum(1 for x in layers if x["sparsity"] == 0)
    text = (f"LTP at {times(target)} (seed {seed}) kept {dense} of its {len(layers)} layers entirely dense; the "
            f"{len(least)} least-pruned layers are {named}; by kind: "
            + ", ".join(f"{k} {n}" for k, n in counts.items()) + ". Least-pruned kind overall: "
            f"**{min(kinds, key=lambda k: kinds[k]['sparsity'])}**.")
    kind_rows = [[k, str(v["layers"]), f"{v['params']:,}", pct(v["sparsity"], 1)] for k, v in kinds.items()]
    layer_rows = [[x["name"], layer_kind(x["name"], x.get("shape")), f"{x['params']:,}", pct(x["sparsity"], 1)]
                  for x in layers]
    return [Paragraph(text), Table(["kind", "layers", "weights", "pruned (%)"], kind_rows,
                                   caption=f"LTP at {times(target)}: sparsity per kind of layer"),
            Table(["layer", "kind", "weights", "pruned (%)"], layer_rows,
                  caption=f"LTP at {times(target)}: sparsity per layer (network order)")]


def _model_section(model: str, entry: dict, verdicts: dict, target: float) -> Section:
    b = entry["budget"]
    budget = (f"Every method gets **{b.get('epochs')} epochs** from that dense model ({b.get('optimizer')}, lr "
              f"{b.get('lr')}, {b.get('schedule', 'constant')}, batch {b.get('batch_size', 128)} for retraining and "
              "fine-tuning). Cells: test top-1 (%) after the whole budget; † an LTP run short of the target, "
              "the rest pruned by global magnitude.")
    hp = "; ".join(f"{METHOD_NAMES.get(m, m)} at {times(t)}: {json.dumps(next(iter(runs.values()))['hparams'], sort_keys=True)}"
                   for m, cells in entry["cells"].items() for t, runs in cells.items())
    return Section(model, [
        Paragraph(_dense_text(entry)), Paragraph(budget),
        Table(*method_table(entry), caption="test top-1 (%)"),
        Table(*method_table(entry, seconds=True), caption="wall seconds per run (dense training excluded)"),
        Table(["compression", "LTP − GMP (points)", "per seed", "noise", "verdict"], verdict_rows(verdicts),
              caption=f"LTP keeps its edge over GMP on {model}: **{verdicts['keeps_edge']}**"),
        *_layers_blocks(entry, target),
        Paragraph(f"Hyperparameters: {hp}."),
    ])


def report_document(collected: dict, verdicts: dict, intro=(), target: float = LEAST_PRUNED_TARGET) -> Document:
    """The suite's report.

    Args:
        collected: :func:`~prunelab.reproductions.mobile.collect.collect`'s output.
        verdicts: ``model -> model_verdicts(cells)``.
        intro: paragraphs before the sections.
        target: the compression of the per-layer sparsity.

    Returns:
        The :class:`~prunelab.utils.render.Document`: the verdict, then a section per model.
    """
    targets = sorted({t for v in verdicts.values() for t in v["targets"]})
    rows = [[model] + [f"{_delta(v['targets'][t]['mean'])} ({v['targets'][t]['verdict']})" if t in v["targets"] else ""
                       for t in targets] + [v["keeps_edge"]] for model, v in verdicts.items()]
    overall = overall_verdict(verdicts)
    summary = [
        Paragraph(f"Does LTP keep its edge over GMP on these networks? **{overall}**. Per model and compression, the "
                  "mean over seeds of LTP − GMP test top-1 (points; each seed both from that seed's dense model). "
                  f"A difference is an edge when it exceeds {NOISE_FACTOR:g} standard errors of the mean of the "
                  f"per-seed differences (with one seed: when it exceeds {100 * ONE_SEED_MARGIN:g} points, a fixed "
                  "guess of seed noise); within that it is unclear. A model keeps the edge "
                  "when LTP is ahead at every compression and loses it when GMP is ahead at one."),
        Table(["model"] + [times(t) for t in targets] + ["keeps its edge"], rows)]
    sections = [Section("Verdict", summary)]
    sections += [_model_section(model, entry, verdicts[model], target) for model, entry in collected.items()]
    return Document(TITLE, list(intro), sections)


def write_mobile_report(outdir, dest=None, results=None, models=None) -> dict:
    """Write the suite's report: ``report.md``, ``report.html`` and ``mobile_results.json``.

    Args:
        outdir: the bench output directory (holding ``results.sqlite``), or, with ``results``, any
            folder (for the default ``dest``).
        dest: where to write (default ``OUTDIR/mobile``).
        results: the run results to report (default: the store's runs of the ``mobile`` and
            ``mobile-3seeds`` suites on any data set; every run of the store when it holds none).
        models: the model names reported (default: the suite's three networks).

    Returns:
        ``{"markdown", "html", "json", "figures": []}``.

    Raises:
        ConfigError: no result store, or no LTP, GMP or magnitude run of a mobile network in it.

    Example:
        >>> write_mobile_report("runs/mobile")["markdown"]   # doctest: +SKIP
        PosixPath('runs/mobile/mobile/report.md')
    """
    outdir = Path(outdir)
    dest = Path(dest) if dest is not None else outdir / "mobile"
    suites: dict = {}
    if results is None:
        results, suites = read_suite_store(outdir, "mobile")
        # A store shared with other runs of these models and methods (other budgets or scopes)
        # reports the suite's own runs only, whichever data set it ran on.
        ours = {s.hash for dataset in {r.spec.dataset for r in results} for s in mobile_specs(dataset, seeds=SEEDS_FULL)}
        results = [r for r in results if r.hash in ours] or results
    names = set(models or (p.model for p in MODELS))
    results = [r for r in results if r.spec.model in names and r.spec.method in METHODS]
    collected = collect(results)
    if not collected:
        raise ConfigError(f"{outdir} holds no completed LTP, GMP or magnitude run of {', '.join(sorted(names))}; "
                          "run `prunelab bench --suite mobile` first")
    verdicts = {model: model_verdicts(entry["cells"]) for model, entry in collected.items()}
    info = lambda key: ", ".join(sorted({str(r.info.get(key)) for r in results}))  # noqa: E731
    intro = [f"{len(results)} runs, prunelab git {info('git_sha')}; torch {info('torch')}; threads {info('threads')}; "
             f"devices {info('device')}. Accuracies in %, differences in points."]
    intro += [f"Suite `{name}`: {s.get('description', '')}. {s.get('notes', '')}" for name, s in suites.items()
              if name.startswith("mobile")]
    doc = report_document(collected, verdicts, intro)
    payload = {"suite": "mobile", "least_pruned_target": LEAST_PRUNED_TARGET, "noise_factor": NOISE_FACTOR,
               "overall": overall_verdict(verdicts),
               "models": {m: {**e, "verdict": verdicts[m],
                              "least_pruned": {s: least_pruned(layers, LEAST_COUNT) for s, layers in e["ltp_layers"].items()},
                              "kind_sparsity": {s: kind_sparsity(layers) for s, layers in e["ltp_layers"].items()}}
                          for m, e in collected.items()}}
    return write_report(doc, dest, "report", [], "mobile_results.json", payload)


def main(argv=None) -> int:
    """``python -m prunelab.reproductions.mobile OUTDIR [--dest DIR]`` (default DIR: OUTDIR/mobile)."""
    return results_main(argv, "mobile", "mobile", write_mobile_report, "wrote {markdown}, {html} and {json}")
