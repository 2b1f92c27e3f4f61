"""Benchmark: sparse inference latency and compact storage. Prints JSON.

For LeNet-300-100 and LeNet-5 on 1x28x28 inputs, pruned by global magnitude at 90/95/98/99 %
sparsity, batch 1 and 64: median latency of PyTorch dense, onnxruntime (the dense pruned model
exported to ONNX) and prunelab sparse (``to_sparse``: per-layer choice measured at conversion),
all in one process, timed interleaved; beside them the FLOP limit ``1 / (1 - s)`` (and the exact
limit from per-layer multiply-accumulates), and the stored sizes (dense safetensors, gzip -9 of
it, prunelab sparse).

Weights: a quick training (default 1 epoch of Adam on 10,000 Fashion-MNIST samples) so that
global magnitude spreads sparsity over layers the way it does on trained networks; the values
of the weights do not matter for speed, only how many survive in each layer. ``--init random``
skips training (then global magnitude prunes the widest layers hardest, as PyTorch's default
init makes their weights smallest). No retraining: accuracy is not measured here.

Also: ``kernels`` times every kernel option side by side on LeNet-300-100's layers at 95 %
(dense, PyTorch CSR in two layouts, torch.sparse.mm on COO, SciPy CSR, the native kernel), and
``batch1_profile`` splits the batch-1 latency into per-layer compute and per-call overhead.

``--suite networks``: the convolutional networks and the wide MLP (resnet18, vgg16 and wrn-16-4
on 3x32x32, mlp 784-1024-1024-10 on 1x28x28; random SAP-init weights, whose values do not matter
for speed) at 80/90/95 % sparsity, layer-wise (first layer dense) and global magnitude, batch 1
and 64, 1 and 2 threads: to_sparse's conversion seconds, then dense PyTorch, onnxruntime (dense,
when importable) and prunelab sparse timed interleaved in one process (median); the theoretical
speedup (dense FLOPs / non-zero FLOPs) and the fraction of it reached; the largest output
difference relative to the largest dense output; how many layers ran chained (one native call
per ``nn.Sequential`` run or per run of convolutions in a traced graph, a ResNet's trunk) and what
the graph fusion folded (BatchNorm) or fused (ReLU, residual add, pre-activation prologue).

Usage:
    python benchmarks/bench_export.py                      # full run, 1 thread (about 2 minutes)
    python benchmarks/bench_export.py --suite networks     # the CNN suite (long: use --models etc.)
    python benchmarks/bench_export.py --suite networks --models resnet18,vgg16 --sparsities 0.9 \
        --schemes layer --batch-sizes 1,64 --thread-counts 1
    python benchmarks/bench_export.py --quick              # fewer repetitions
    python benchmarks/bench_export.py --threads 2 --out results/export.json
    python benchmarks/bench_export.py --render networks.json --markdown networks.md   # tables of a saved run
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import prunelab
from prunelab import models
from prunelab.errors import PrunelabError
from prunelab.export import (SparseLinear, export_onnx, interleaved, make_permanent, native, onnxruntime_session,
                             storage_sizes, to_sparse)
from prunelab.core.metrics import summary

warnings.simplefilter("ignore")


def quick_train(name: str, samples: int, epochs: int, log) -> tuple[nn.Module, str]:
    torch.manual_seed(0)
    model = models.create(name, (1, 28, 28), 10)
    if samples <= 0 or epochs <= 0:
        return model, "random init (PyTorch default)"
    try:
        data = prunelab.data.load("fashion-mnist", limit=samples, val_size=1000)
    except PrunelabError as exc:
        log(f"no Fashion-MNIST ({exc}); using random init")
        return model, "random init (Fashion-MNIST unavailable)"
    start = time.perf_counter()
    prunelab.train(model, data.train, prunelab.TrainConfig(epochs=epochs, optimizer="adam", lr=1e-3, batch_size=128),
                   progress=False)
    top1 = prunelab.evaluate(model, data.test)["top1"]
    log(f"{name}: trained {epochs} epoch(s) on {samples} samples in {time.perf_counter() - start:.1f}s, test top-1 {top1:.3f}")
    return model, f"trained {epochs} epoch(s), Adam 1e-3, {samples} Fashion-MNIST samples, dense test top-1 {top1:.4f}"


def pruned(dense: nn.Module, sparsity: float) -> nn.Module:
    model = copy.deepcopy(dense)
    masks = prunelab.prune(model, "magnitude", sparsity=sparsity, scope="global")
    return make_permanent(model, masks).eval()


def measure_point(model, batch, threads, warmup, reps, onnx_path):
    x = torch.randn(batch, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    start = time.perf_counter()
    sparse = to_sparse(model, batch_size=batch, threads=threads, example_input=x)
    convert_s = time.perf_counter() - start
    with torch.no_grad():
        max_diff = float((sparse(x) - model(x)).abs().max())
    fns = {"torch_dense": lambda: model(x), "prunelab_sparse": lambda: sparse(x)}
    if onnx_path is not None:
        session = onnxruntime_session(onnx_path, threads, spinning=False)
        feed = {"input": x.numpy()}
        fns["onnxruntime_dense"] = lambda: session.run(None, feed)
    timed = interleaved(fns, warmup=warmup, reps=reps)
    dense_us = timed["torch_dense"]["median_us"]
    return {
        "batch": batch,
        "latency_us": {k: v["median_us"] for k, v in timed.items()},
        "p10_p90_us": {k: [v["p10_us"], v["p90_us"]] for k, v in timed.items()},
        "speedup_vs_torch_dense": {k: round(dense_us / v["median_us"], 2) for k, v in timed.items()},
        "layers": {e["name"]: e["choice"] for e in sparse.sparse_report["layers"]},
        "layer_sparsity": {e["name"]: e["sparsity"] for e in sparse.sparse_report["layers"]},
        "conversion_s": round(convert_s, 2),
        "max_abs_diff_sparse_vs_dense": max_diff,
    }


def kernel_options(model: nn.Module, batch: int, warmup: int, reps: int) -> dict:
    """Every Linear layer of ``model`` with each kernel option, interleaved (product + bias, no ReLU)."""
    import numpy as np
    import scipy.sparse as sp

    out = {}
    x = torch.randn(batch, 1, 28, 28, generator=torch.Generator().manual_seed(2)).flatten(1)
    for name, layer in model.named_children():
        if not isinstance(layer, nn.Linear):
            if not isinstance(layer, nn.Flatten):
                x = layer(x)
            continue
        w, b = layer.weight.detach(), layer.bias.detach()
        w_csr, wt_csr, w_coo = w.to_sparse_csr(), w.t().contiguous().to_sparse_csr(), w.to_sparse_coo()
        w_scipy = sp.csr_matrix(w.numpy())
        xin = x.detach().clone()
        native_layer = SparseLinear(layer, backend="native") if native.get() else None
        fns = {
            "dense F.linear (MKL)": lambda: F.linear(xin, w, b),
            "torch CSR: addmm(b, W_csr, x^T)^T": lambda: torch.addmm(b.unsqueeze(1), w_csr, xin.t()).t(),
            "scipy CSR: (W @ x^T)^T + b": lambda: torch.from_numpy(np.ascontiguousarray((w_scipy @ xin.numpy().T).T)) + b,
        }
        if native_layer is not None:
            fns["prunelab native"] = lambda: native_layer(xin)
        # options 10x slower than dense are timed in a second round (with dense as the reference):
        # interleaved with the fast ones they would evict the caches the fast ones rely on
        slow = {
            "dense F.linear (MKL), second round": lambda: F.linear(xin, w, b),
            "torch CSR: x @ (W^T)_csr + b": lambda: torch.mm(xin, wt_csr) + b,
            "torch.sparse.mm(W_coo, x^T)^T + b": lambda: torch.sparse.mm(w_coo, xin.t()).t() + b,
        }
        out[name] = {}
        for group in (fns, slow):
            usable = {}
            for k, f in group.items():
                try:
                    f()
                    usable[k] = f
                except (RuntimeError, NotImplementedError):
                    out[name][k] = "unsupported"
            timed = interleaved(usable, warmup=warmup, reps=reps)
            out[name].update({k: v["median_us"] for k, v in timed.items()})
        out[name]["sparsity"] = round(float((w == 0).float().mean()), 4)
        x = layer(x)
    return out


def whole_model_backends(model: nn.Module, batch: int, warmup: int, reps: int) -> dict:
    x = torch.randn(batch, 1, 28, 28, generator=torch.Generator().manual_seed(3))
    fns = {"torch dense": lambda: model(x)}
    torch_only = to_sparse(model, policy="always", backends=("torch",))
    fns["all layers torch CSR (no fusion benefit)"] = lambda: torch_only(x)
    if native.get():
        native_all = to_sparse(model, policy="always", backends=("native",))
        fns["all layers native (ReLU fused)"] = lambda: native_all(x)
    fns["to_sparse auto"] = (lambda s=to_sparse(model, batch_size=batch, example_input=x): s(x))
    return {k: v["median_us"] for k, v in interleaved(fns, warmup=warmup, reps=reps).items()}


def batch1_profile(model: nn.Module, warmup: int, reps: int) -> dict:
    """Where the time of one batch-1 forward goes: per-module calls, bare functional calls,
    nn.Module call overhead, the native kernel called directly (no module), onnxruntime."""
    x = torch.randn(1, 1, 28, 28, generator=torch.Generator().manual_seed(4))
    inputs, h = {}, x
    for name, module in model.named_children():
        inputs[name] = h
        h = module(h)
    fns = {"whole model": lambda: model(x), "nn.Identity call (module overhead)": lambda: nn.Identity()(x)}
    for name, module in model.named_children():
        fns[f"module {name}"] = (lambda m=module, i=inputs[name]: m(i))
        if isinstance(module, nn.Linear):
            fns[f"F.linear {name}"] = (lambda m=module, i=inputs[name]: F.linear(i, m.weight, m.bias))
    sparse = to_sparse(model, policy="always", backends=("native",)) if native.get() else None
    if sparse is not None:
        fns["sparse model (all native, fused ReLU)"] = lambda: sparse(x)
        layers = [m for m in sparse.modules() if isinstance(m, SparseLinear)]
        lib = native.get()
        bufs, h = [], x.flatten(1)
        for m in layers:
            h2 = m(h)
            bufs.append((m._descriptors[None], h.contiguous(), torch.empty_like(h2)))
            h = h2

        def direct():
            for desc, i, o in bufs:
                lib.pl_sparse_forward(desc.data_ptr(), 1, i.data_ptr(), o.data_ptr())

        fns["native kernels called directly (3 ctypes calls, no modules)"] = direct
        for name, m in sparse.named_children():
            if isinstance(m, SparseLinear):
                fns[f"sparse module {name}"] = (lambda m=m, i=inputs[name].flatten(1): m(i))
    with tempfile.TemporaryDirectory() as tmp:
        session = onnxruntime_session(export_onnx(model, Path(tmp) / "m.onnx"), torch.get_num_threads(), spinning=False)
        feed = {"input": x.numpy()}
        fns["onnxruntime session.run"] = lambda: session.run(None, feed)
        timed = interleaved(fns, warmup=warmup, reps=reps)
    result = {k: v["median_us"] for k, v in timed.items()}
    parts = sum(v for k, v in result.items() if k.startswith("module "))
    result["sum of module calls"] = round(parts, 2)
    return result


def module_breakdown(model: nn.Module, batch: int, warmup: int, reps: int) -> dict:
    """Median time of each top-level module of the dense model and of its sparse copy, on their
    real inputs: shows where a whole-model speedup comes from (e.g. fused pooling)."""
    x = torch.randn(batch, 1, 28, 28, generator=torch.Generator().manual_seed(5))
    sparse = to_sparse(model, batch_size=batch, example_input=x)
    fns = {"dense whole model": lambda: model(x), "sparse whole model": lambda: sparse(x)}
    for label, net in (("dense", model), ("sparse", sparse)):
        h = x
        for name, module in net.named_children():
            if not isinstance(module, nn.Identity):
                fns[f"{label} {name}"] = (lambda m=module, i=h: m(i))
            h = module(h)
    return {k: v["median_us"] for k, v in interleaved(fns, warmup=warmup, reps=reps).items()}


NETWORKS = {
    "resnet18": ("resnet18", (3, 32, 32), {}),
    "vgg16": ("vgg16", (3, 32, 32), {}),
    "wrn-16-4": ("wrn", (3, 32, 32), {"depth": 16, "widen_factor": 4}),
    "mlp-1024": ("mlp", (1, 28, 28), {"hidden": (1024, 1024)}),
}


def network_point(model, shape, batch, threads, reps_budget_s, max_reps, onnx_path) -> dict:
    """Convert for (batch, threads), check the outputs, time dense / onnxruntime / sparse."""
    x = torch.randn(batch, *shape, generator=torch.Generator().manual_seed(7))
    torch.set_num_threads(threads)
    start = time.perf_counter()
    sparse = to_sparse(model, batch_size=batch, threads=threads, input_shape=shape)
    convert_s = time.perf_counter() - start
    with torch.no_grad():
        reference, got = model(x), sparse(x)
    rel = float((got - reference).abs().max() / reference.abs().max().clamp_min(1e-30))
    fns = {"torch_dense": lambda: model(x), "prunelab_sparse": lambda: sparse(x)}
    if onnx_path is not None:
        session = onnxruntime_session(onnx_path, threads, spinning=False)
        feed = {"input": x.numpy()}
        fns["onnxruntime_dense"] = lambda: session.run(None, feed)
    with torch.inference_mode():
        t0 = time.perf_counter()
        for f in fns.values():
            f()
        round_s = time.perf_counter() - t0
    reps = int(max(3, min(max_reps, reps_budget_s / max(round_s, 1e-9))))
    timed = interleaved(fns, warmup=1, reps=reps)
    dense_us = timed["torch_dense"]["median_us"]
    report = sparse.sparse_report
    return {
        "batch": batch, "threads": threads, "reps": reps,
        "latency_us": {k: v["median_us"] for k, v in timed.items()},
        "speedup_vs_torch_dense": {k: round(dense_us / v["median_us"], 2) for k, v in timed.items()},
        "to_sparse_s": round(convert_s, 2),
        "sparse_layers": sum(e["choice"] != "dense" for e in report["layers"]),
        "layers": len(report["layers"]),
        "timed_layers": sum(e.get("decided_by") == "timing" for e in report["layers"]),
        "reverted": report["reverted"],
        "chained_layers": sum(len(c) for runs in report.get("chains", {}).values() for c in runs)
        + sum(len(run) for run in report.get("graph_runs", {}).values()),
        "graph_fusion": {k: len(v) for k, v in report.get("graph_fusion", {}).items()},
        "max_rel_diff": rel,
    }


def networks_suite(args, log) -> dict:
    from prunelab.core.prunable import PrunableRule

    sparsities = [float(s) for s in args.sparsities.split(",")]
    batches = [int(b) for b in args.batch_sizes.split(",")]
    thread_counts = [int(t) for t in args.thread_counts.split(",")]
    try:
        import onnxruntime  # noqa: F401
        have_ort = True
    except ImportError:
        have_ort = False
    out = {}
    for name in args.models.split(","):
        factory, shape, kwargs = NETWORKS[name]
        torch.manual_seed(0)
        base = models.create(factory, shape, 10, **kwargs).eval()
        for scheme in args.schemes.split(","):
            for s in sparsities:
                model = copy.deepcopy(base)
                rule = PrunableRule(exclude_first=True) if scheme == "layer" else None
                masks = prunelab.prune(model, "magnitude", sparsity=s, scope=scheme, rule=rule)
                make_permanent(model, masks).eval()
                theory = summary(model, input_shape=shape)["theoretical_speedup"]
                key = f"{name} {scheme} s={s}"
                out[key] = {"theoretical_speedup": round(theory, 2), "points": []}
                with tempfile.TemporaryDirectory() as tmp:
                    onnx_path = export_onnx(model, Path(tmp) / "m.onnx", input_shape=(1, *shape)) if have_ort else None
                    for t in thread_counts:
                        for b in batches:
                            row = network_point(model, shape, b, t, args.budget, args.reps, onnx_path)
                            row["fraction_of_theoretical"] = round(row["speedup_vs_torch_dense"]["prunelab_sparse"] / theory, 3)
                            out[key]["points"].append(row)
                            log(f"{key} t={t} b={b}: {row['speedup_vs_torch_dense']} (theory {theory:.2f}) "
                                f"to_sparse {row['to_sparse_s']}s rel {row['max_rel_diff']:.1e}")
    return out


def networks_summary(results: dict) -> dict:
    """Over every point: the slowest sparse / dense ratio, the largest output difference and
    conversion time."""
    points = [(key, row) for key, entry in results.items() for row in entry["points"]]
    slowest = min(points, key=lambda kr: kr[1]["speedup_vs_torch_dense"]["prunelab_sparse"])
    return {"points": len(points),
            "min_sparse_speedup": slowest[1]["speedup_vs_torch_dense"]["prunelab_sparse"],
            "min_sparse_speedup_at": f"{slowest[0]} batch {slowest[1]['batch']} threads {slowest[1]['threads']}",
            "sparse_never_slower_than_dense": all(r["speedup_vs_torch_dense"]["prunelab_sparse"] >= 1.0 for _, r in points),
            "max_rel_diff": max(r["max_rel_diff"] for _, r in points),
            "max_to_sparse_s": max(r["to_sparse_s"] for _, r in points)}


def networks_markdown(result: dict) -> str:
    """The networks suite as Markdown: one table per thread count, rows model x scheme x
    sparsity, for each batch size sparse / onnxruntime speedup over dense PyTorch and the
    fraction of the theoretical speedup sparse reached, then to_sparse's seconds."""
    results = result["results"]
    threads = sorted({r["threads"] for e in results.values() for r in e["points"]})
    batches = sorted({r["batch"] for e in results.values() for r in e["points"]})
    lines = []
    for t in threads:
        lines += [f"**{t} thread{'s' if t > 1 else ''}** (speedup over dense PyTorch: prunelab sparse / onnxruntime "
                  "dense; in brackets the fraction of the theoretical speedup sparse reached)", "",
                  "| model | scheme | sparsity | theoretical | " + " | ".join(f"batch {b}" for b in batches)
                  + " | `to_sparse` s (" + " / ".join(str(b) for b in batches) + ") |",
                  "|---|---|--:|--:|" + "--:|" * len(batches) + "--:|"]
        for key, entry in results.items():
            name, scheme, s = key.split(" ")
            rows = {r["batch"]: r for r in entry["points"] if r["threads"] == t}
            cells = []
            for b in batches:
                r = rows.get(b)
                if r is None:
                    cells.append("")
                    continue
                sp = r["speedup_vs_torch_dense"]
                ort = f" / {sp['onnxruntime_dense']:.2f}×" if "onnxruntime_dense" in sp else ""
                cells.append(f"{sp['prunelab_sparse']:.2f}×{ort} ({r['fraction_of_theoretical']:.2f})")
            conv = " / ".join(f"{rows[b]['to_sparse_s']:.2f}" if b in rows else "" for b in batches)
            scheme_text = "layer-wise, first layer dense" if scheme == "layer" else "global magnitude"
            lines.append(f"| {name} | {scheme_text} | {float(s[2:]):.0%} | {entry['theoretical_speedup']:.2f}× | "
                         + " | ".join(cells) + f" | {conv} |")
        lines.append("")
    summary = result.get("summary") or networks_summary(results)
    lines.append(f"Slowest point: {summary['min_sparse_speedup']:.2f}× ({summary['min_sparse_speedup_at']}); "
                 f"largest output difference {summary['max_rel_diff']:.1e} of the largest dense output; "
                 f"slowest `to_sparse` {summary['max_to_sparse_s']:.2f} s; load average at start / end "
                 f"{result['setup']['load_average_1_5_15_start'][0]} / {result['setup']['load_average_1_5_15_end'][0]}.")
    return "\n".join(lines) + "\n"


def _emit(result: dict, out: str | None) -> int:
    """Stamp the end load average, print the JSON, and write it to ``out`` when given."""
    result["setup"]["load_average_1_5_15_end"] = [round(v, 2) for v in os.getloadavg()]
    text = json.dumps(result, indent=2)
    print(text)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text)
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--suite", choices=("lenet", "networks"), default="lenet")
    parser.add_argument("--models", default=None, help="lenet: lenet-300-100,lenet5; networks: " + ",".join(NETWORKS))
    parser.add_argument("--schemes", default="layer,global", help="networks: layer-wise (first layer dense) and/or global")
    parser.add_argument("--thread-counts", default="1,2", help="networks: thread counts")
    parser.add_argument("--budget", type=float, default=20.0, help="networks: seconds of timing per point (at least 3 reps)")
    parser.add_argument("--sparsities", default="0.9,0.95,0.98,0.99")
    parser.add_argument("--batch-sizes", default="1,64")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--reps", type=int, default=200)
    parser.add_argument("--train-samples", type=int, default=10000)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--init", choices=("trained", "random"), default="trained")
    parser.add_argument("--quick", action="store_true", help="warmup 5, reps 40")
    parser.add_argument("--no-extras", action="store_true", help="skip the kernel comparison and batch-1 profile")
    parser.add_argument("--out", default=None, help="also write the JSON here")
    parser.add_argument("--markdown", default=None, help="networks: also write the tables as Markdown here")
    parser.add_argument("--render", default=None, metavar="JSON",
                        help="networks: only write the Markdown tables of a saved JSON (to --markdown, else stdout)")
    args = parser.parse_args(argv)
    if args.render:
        text = networks_markdown(json.loads(Path(args.render).read_text()))
        if args.markdown:
            Path(args.markdown).write_text(text)
        else:
            print(text, end="")
        return 0
    if args.quick:
        args.warmup, args.reps = 5, 40
    torch.set_num_threads(args.threads)
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    if args.suite == "networks":
        args.models = args.models or ",".join(NETWORKS)
        args.sparsities = args.sparsities if args.sparsities != "0.9,0.95,0.98,0.99" else "0.8,0.9,0.95"
        native.load()
        result = {"benchmark": "export networks",
                  "setup": {"thread_counts": args.thread_counts, "max_reps": args.reps, "budget_s_per_point": args.budget,
                            "timing": "interleaved (torch dense, onnxruntime dense, prunelab sparse), median, "
                                      "torch.inference_mode, gc off, one process",
                            "weights": "random SAP init; layer = layer-wise magnitude with the first layer dense, "
                                       "global = global magnitude",
                            "torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
                            "cpu_count": os.cpu_count(), "native_kernel": native.status(),
                            "load_average_1_5_15_start": [round(v, 2) for v in os.getloadavg()]},
                  "results": networks_suite(args, log)}
        result["summary"] = networks_summary(result["results"])
        code = _emit(result, args.out)
        if args.markdown:
            Path(args.markdown).write_text(networks_markdown(result))
        return code
    args.models = args.models or "lenet-300-100,lenet5"
    sparsities = [float(s) for s in args.sparsities.split(",")]
    batches = [int(b) for b in args.batch_sizes.split(",")]
    native.load()
    result = {
        "benchmark": "export",
        "setup": {"threads": args.threads, "warmup": args.warmup, "reps": args.reps,
                  "timing": "interleaved candidates, median of reps (p10/p90 beside), torch.inference_mode, gc off",
                  "torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
                  "native_kernel": native.status(), "dtype": "float32", "input": [1, 28, 28],
                  "cpu_count": os.cpu_count(), "load_average_1_5_15_start": [round(v, 2) for v in os.getloadavg()]},
        "models": {},
    }
    try:
        import onnxruntime

        result["setup"]["onnxruntime"] = onnxruntime.__version__
        have_ort = True
    except ImportError:
        have_ort = False
    for name in args.models.split(","):
        dense, weights = quick_train(name, args.train_samples if args.init == "trained" else 0, args.epochs, log)
        entry = {"weights": weights, "points": []}
        for s in sparsities:
            model = pruned(dense, s)
            info = summary(model)
            point = {"sparsity": s, "flop_limit_1_over_1_minus_s": round(1 / (1 - s), 2),
                     "flop_limit_per_layer_macs": round(info["theoretical_speedup"], 2),
                     "storage_bytes": storage_sizes(model), "batches": []}
            with tempfile.TemporaryDirectory() as tmp:
                onnx_path = export_onnx(model, Path(tmp) / "m.onnx") if have_ort else None
                for b in batches:
                    row = measure_point(model, b, args.threads, args.warmup, args.reps, onnx_path)
                    point["batches"].append(row)
                    log(f"{name} s={s} batch {b}: {row['latency_us']} -> {row['speedup_vs_torch_dense']['prunelab_sparse']}x")
            entry["points"].append(point)
        result["models"][name] = entry
        if name == "lenet5" and not args.no_extras:
            model = pruned(dense, 0.95)
            result["module_breakdown_lenet5_s95"] = {f"batch {b}": module_breakdown(model, b, args.warmup, args.reps)
                                                     for b in batches}
        if name == "lenet-300-100" and not args.no_extras:
            model = pruned(dense, 0.95)
            result["kernels_lenet300_s95"] = {f"batch {b}": kernel_options(model, b, args.warmup, args.reps) for b in batches}
            result["whole_model_backends_lenet300_s95"] = {f"batch {b}": whole_model_backends(model, b, args.warmup, args.reps)
                                                           for b in batches}
            result["batch1_profile_lenet300_s95"] = batch1_profile(model, args.warmup, args.reps)
    points = [(n, p["sparsity"], r) for n, e in result["models"].items() for p in e["points"] for r in p["batches"]]
    result["summary"] = {
        "sparse_never_slower_than_dense": all(r["latency_us"]["prunelab_sparse"] <= r["latency_us"]["torch_dense"]
                                              for _, _, r in points),
        "speedups": {f"{n} s={s} batch {r['batch']}": r["speedup_vs_torch_dense"]["prunelab_sparse"] for n, s, r in points},
        "max_abs_diff": max(r["max_abs_diff_sparse_vs_dense"] for _, _, r in points),
    }
    return _emit(result, args.out)


if __name__ == "__main__":
    sys.exit(main())
