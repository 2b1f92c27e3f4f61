"""The ``lm`` suites' report: ``report.md`` (figures beside it), ``report.html`` and
``lm_results.json`` in ``OUTDIR/lm``: the dense model beside the order-2 byte n-gram baseline, test
bits per byte per method and target, the figures, and the verdicts of the four claims."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prunelab import data as data_mod
from prunelab.errors import PrunelabError
from prunelab.reproductions.common import open_suite_store, results_main, write_report
from prunelab.reproductions.lm.claims import UNCLEAR, check_claims
from prunelab.reproductions.lm.collect import METHOD_TABLE, collect
from prunelab.reproductions.lm.figures import fig_bpb_vs_sparsity, fig_bpb_vs_time, fig_pqi
from prunelab.reproductions.lm.protocol import COST_TARGET, SGD_MAGNITUDE
from prunelab.reproductions.pitas.tables import secs
from prunelab.utils.io import atomic_write_json
from prunelab.utils.render import Document, Figure, Paragraph, Section, Table

__all__ = ["NGRAM_ORDER", "ngram_for", "table_dense", "table_methods", "report_document", "write_lm_report", "main"]

TITLE = "Pruning a byte-level language model: every family on gpt"
#: the order of the n-gram baseline (bytes of context).
NGRAM_ORDER = 2
_CACHE = "ngram.json"


def _f(value, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _data_dir(data_source: str | None):
    """The folder the ``text`` data came from (None: the standard library, or not recoverable)."""
    match = re.match(r"^text files under (.*) \(bytes; split by", data_source or "")
    return match.group(1) if match else None


def ngram_for(setup: dict, cache_dir: Path | None = None, data_dir=None) -> dict | None:
    """The order-:data:`NGRAM_ORDER` byte n-gram baseline on the setup's data (cached in ``cache_dir``).

    Args:
        setup: one setup of :func:`~prunelab.reproductions.lm.collect.collect`.
        cache_dir: where ``ngram.json`` keeps results by setup (None: no cache).
        data_dir: the data folder (None: recovered from the runs' data source, else the default).

    Returns:
        ``{"order", "smoothing", "val_bpb", "test_bpb", "train_bytes"}``, or ``{"error": why}`` when
        the data cannot be loaded again.
    """
    key = json.dumps([setup["dataset"], setup["data_kwargs"], setup.get("data_source"), NGRAM_ORDER], sort_keys=True)
    path = Path(cache_dir) / _CACHE if cache_dir is not None else None
    cache = {}
    if path is not None and path.is_file():
        try:
            cache = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            cache = {}
    if key in cache:
        return cache[key]
    from prunelab.data.ngram import ngram_baseline

    try:
        dataset = data_mod.load(setup["dataset"], data_dir=data_dir or _data_dir(setup.get("data_source")),
                                **setup["data_kwargs"])
        result = {**ngram_baseline(dataset, order=NGRAM_ORDER),
                  "manifest_hash": (dataset.info.get("tokens") or {}).get("manifest_hash")}
    except PrunelabError as exc:
        return {"error": str(exc).splitlines()[0]}
    if path is not None:
        atomic_write_json(path, {**cache, key: result}, indent=1, mkdir=True)
    return result


def table_dense(setup: dict, ngram: dict | None) -> tuple[list, list, str]:
    """The dense models and the n-gram baseline: val / test bits per byte and perplexity per byte.

    Returns:
        ``(header, rows, sentence)``: the sentence says whether the dense model beats the n-gram.
    """
    header = ["model", "val bpb", "test bpb", "val ppl", "test ppl", "train s"]
    rows = []
    for label, key in (("gpt, dense (AdamW)", "dense"), ("gpt, dense (plain SGD, gRDA's baseline)", "sgd_dense")):
        d = setup.get(key)
        if d:
            rows.append([label, _f(d["val_bpb"]), _f(d["test_bpb"]), _f(d["val_ppl"], 2), _f(d["test_ppl"], 2),
                         secs(d["seconds"])])
    if ngram and "error" not in ngram:
        rows.append([f"order-{ngram['order']} byte n-gram ({ngram['smoothing']})", _f(ngram["val_bpb"]),
                     _f(ngram["test_bpb"]), _f(2 ** ngram["val_bpb"] if ngram["val_bpb"] is not None else None, 2),
                     _f(2 ** ngram["test_bpb"], 2), ""])
    dense = setup.get("dense") or {}
    if not ngram or "error" in ngram or dense.get("test_bpb") is None:
        why = (ngram or {}).get("error", "no dense run")
        sentence = f"Dense against the n-gram: unclear ({why})."
    else:
        gap = ngram["test_bpb"] - dense["test_bpb"]
        sentence = (f"The dense model {'beats' if gap > 0 else 'does NOT beat'} the order-{ngram['order']} n-gram: "
                    f"test {_f(dense['test_bpb'])} vs {_f(ngram['test_bpb'])} bits per byte (n-gram minus dense: {gap:+.3f}).")
    manifest = ngram.get("manifest_hash") if ngram else None
    if manifest:
        runs_manifest = (setup.get("data_tokens") or {}).get("manifest_hash")
        same = "" if runs_manifest in (None, manifest) else " (NOT the text the runs recorded: " + runs_manifest[:16] + "…)"
        sentence += f" The n-gram was fitted and scored on the text with manifest SHA-256 {manifest[:16]}…{same}."
    return header, rows, sentence


def _cell(p: dict | None) -> str:
    """``"pruned → final"`` test bpb of a point (``final`` alone for methods owning their loop)."""
    if p is None:
        return ""
    if p.get("pruned_test_bpb") is None:
        return _f(p.get("final_test_bpb"))
    return f"{_f(p['pruned_test_bpb'])} → {_f(p.get('final_test_bpb'))}"


def _at(points: list, target: float) -> dict | None:
    return next((p for p in points if abs(p["target"] - target) < 1e-9), None)


def table_methods(setup: dict, cost_target: float = COST_TARGET) -> tuple[list, list]:
    """Test bpb per method and target (without → with retraining), the N:M pattern, the achieved
    sparsity at the highest target, the prune seconds at ``cost_target`` and the run's total seconds.

    Returns:
        ``(header, rows)``.
    """
    methods = setup["methods"]
    targets = sorted({p["target"] for m in methods.values() for p in m["points"] if m["family"] != "grda"})
    patterns = sorted({p["pattern"] for m in methods.values() for p in m["pattern"]})
    own = any(m["family"] in ("iterative", "grda") and name != SGD_MAGNITUDE for name, m in methods.items())
    header = (["method", "family"] + [f"{100 * t:g} %" for t in targets] + patterns + (["own schedule"] if own else [])
              + ["sparsity reached", f"prune s ({100 * cost_target:g} %)", "run s (last)"])
    rows = []
    for name, m in methods.items():
        by_pattern = {p["pattern"]: p for p in m["pattern"]}
        last = m["points"][-1] if m["points"] else None
        if m["family"] in ("iterative", "grda") and name != SGD_MAGNITUDE:
            # one run to its own sparsity (iterative: up to the highest target; gRDA: set by c and mu)
            cells, schedule = [""] * len(targets), [_cell(last)]
        else:
            cells, schedule = [_cell(_at(m["points"], t)) for t in targets], [""]
        cost = _at(m["points"], cost_target) if m["family"] == "oneshot" else None
        row = [name, m["family"]] + cells + [_cell(by_pattern.get(pat)) for pat in patterns] + (schedule if own else [])
        row += [_f(last.get("sparsity")) if last else "", secs(cost["prune_s"]) if cost and cost.get("prune_s") else "",
                secs(last.get("total_s")) if last and last.get("total_s") is not None else ""]
        rows.append(row)
    return header, rows


def _claims_section(claims: list[dict]) -> list:
    rows = []
    for i, c in enumerate(claims, start=1):
        verdict = c["verdict"]
        if "sap_verdict" in c:
            verdict = f"falls then rises: {c['verdict']}; SAP vs OS/LT: {c['sap_verdict']}"
        rows.append([f"({i})", c["claim"], verdict, c["detail"]])
    text = ("Verdicts are computed from the stored runs (test bits per byte, lower is better; differences within "
            "0.01 bpb are ties; a claim is unclear where runs are missing or the evidence is mixed).")
    return [Paragraph(text), Table(["", "claim", "verdict", "numbers"], rows)]


def _budget_text(setup: dict) -> str:
    dense = setup.get("dense") or {}
    tokens = setup.get("data_tokens") or {}
    manifest = (f", manifest SHA-256 {tokens['manifest_hash'][:16]}…, bytes {json.dumps(tokens.get('bytes'), sort_keys=True)}"
                if tokens.get("manifest_hash") else "")
    return (f"Data: {setup['dataset']} {json.dumps(setup['data_kwargs'], sort_keys=True)} ({setup.get('data_source')}"
            f"{manifest}); "
            f"model gpt {json.dumps(setup['model_kwargs'], sort_keys=True) or '{}'}; dense recipe "
            f"{json.dumps(dense.get('budget'), sort_keys=True)}; {setup.get('calib_size')} calibration sequences for "
            "the one-shot methods. Cells: test bits per byte right after pruning → after the method's retraining "
            "(one-shot: one epoch with the mask fixed); a single number: methods that own their loop (iterative: "
            "rounds of prune + one epoch of fine-tuning; GMP / LTP: two epochs from the dense model; gRDA: trained "
            "from initialisation for the SGD dense epochs + one, the same total as SGD + magnitude). Sparsity "
            "reached: of the prunable weights, at the method's highest target (gRDA: its own). Hyperparameters: "
            + "; ".join(f"{n} {json.dumps(m['hparams'], sort_keys=True)}" for n, m in setup["methods"].items()
                        if m["hparams"]) + ".")


def report_document(collected: dict, intro: list[str], ngrams: dict) -> Document:
    """The report: per setup, the dense model and the n-gram, the method table, the figures and the claims.

    Args:
        collected: :func:`~prunelab.reproductions.lm.collect.collect`'s output.
        intro: paragraphs under the title.
        ngrams: setup key → :func:`ngram_for`'s result.

    Returns:
        The :class:`~prunelab.utils.render.Document`.
    """
    order = [m.name for m in METHOD_TABLE] + ["gRDA", SGD_MAGNITUDE]
    sections = []
    for i, (key, setup) in enumerate(collected.items()):
        suffix = "" if len(collected) == 1 else f" ({i + 1})"
        header, rows, sentence = table_dense(setup, ngrams.get(key))
        blocks = [Table(header, rows, caption="Bits per byte (bpb) = mean cross-entropy in bits per byte; perplexity per "
                                              "byte = 2^bpb."), Paragraph(sentence)]
        blocks.append(Table(*table_methods(setup), caption="Test bits per byte, without → with retraining."))
        blocks.append(Paragraph(_budget_text(setup)))
        blocks += [
            Figure(f"bpb-vs-sparsity{suffix}", fig_bpb_vs_sparsity(setup, order, ngrams.get(key)),
                   "Test bpb against achieved sparsity, without retraining and after it; dashed: dense; dotted: n-gram."),
            Figure(f"bpb-vs-prune-time{suffix}", fig_bpb_vs_time(setup, order),
                   f"Test bpb without retraining at {COST_TARGET:.0%} against prune wall time (log)."),
            Figure(f"pqi-per-round{suffix}", fig_pqi(setup, order),
                   "PQ Index per round and test bpb per round of OS, LT and SAP."),
        ]
        sections.append(Section(f"Results{suffix}", blocks))
        sections.append(Section(f"Claims{suffix}", _claims_section(check_claims(setup))))
    return Document(TITLE, intro, sections)


def write_lm_report(outdir, dest=None, results=None, data_dir=None) -> dict:
    """Write the suites' report: ``report.md`` (figures beside it), ``report.html`` and ``lm_results.json``.

    Args:
        outdir: the bench output directory (holding ``results.sqlite``), or, with ``results``, any folder.
        dest: where to write (default ``OUTDIR/lm``).
        results: the run results (default: every run of the store).
        data_dir: the data folder, for the n-gram baseline (default: recovered from the runs).

    Returns:
        ``{"markdown", "html", "json", "figures": [paths]}``.

    Raises:
        ConfigError: no result store, or no gpt run in it.

    Example:
        >>> write_lm_report("runs/lm")["markdown"]   # doctest: +SKIP
        PosixPath('runs/lm/lm/report.md')
    """
    outdir = Path(outdir)
    dest, results, suites, collected = open_suite_store(outdir, outdir / "lm" if dest is None else dest, "lm",
                                                        collect, lambda c: not c, "gpt", results)
    ngrams = {key: ngram_for(setup, dest, data_dir) for key, setup in collected.items()}
    gpt = [r for r in results if r.spec.model == "gpt"]
    intro = [f"{len(gpt)} runs; prunelab git {', '.join(sorted({str(r.info.get('git_sha')) for r in gpt}))}; torch "
             f"{', '.join(sorted({str(r.info.get('torch')) for r in gpt}))}; threads "
             f"{', '.join(sorted({str(r.info.get('threads')) for r in gpt}))}; devices "
             f"{', '.join(sorted({str(r.info.get('device')) for r in gpt}))}."]
    for name, info in suites.items():
        if name.startswith("lm"):
            intro.append(f"Suite `{name}`: {info.get('description', '')}. {info.get('notes', '')}")
    doc = report_document(collected, intro, ngrams)
    claims = {key: [{k: v for k, v in c.items() if k in ("claim", "verdict", "sap_verdict", "detail")}
                    for c in check_claims(setup)] for key, setup in collected.items()}
    payload = {"suite": "lm", "setups": collected, "ngram": ngrams, "claims": claims,
               "unclear": sum(c["verdict"] == UNCLEAR for cs in claims.values() for c in cs)}
    figure_names = [f"lm-{fig.name.replace(' ', '').replace('(', '-').replace(')', '')}.png"
                    for _, _, fig in doc.figures()]
    return write_report(doc, dest, "report", figure_names, "lm_results.json", payload)


def main(argv=None) -> int:
    """``python -m prunelab.reproductions.lm OUTDIR [--dest DIR] [--data-dir DIR]`` (default DIR: OUTDIR/lm)."""
    return results_main(argv, "lm", "lm", write_lm_report, "wrote {markdown}, {html}, {json} and {figures} figures",
                        options={"--data-dir": "the text data folder, for the n-gram baseline (default: the runs')"})
