"""CLI of the export area: ``prunelab export`` and ``prunelab latency``.

- ``export CHECKPOINT --format sparse|onnx|dense [-o OUT]`` makes the pruning permanent and
  writes the compact sparse file (sizes against dense and gzip are printed), an ONNX file
  (checked against onnxruntime when it is installed) or a plain dense checkpoint without masks.
- ``latency CHECKPOINT [--batch-sizes 1,64] [--threads N] [--warmup W] [--reps R]`` times the
  dense model against its :func:`prunelab.export.to_sparse` copy (and onnxruntime with ``--onnx``),
  interleaved, medians, and prints which layers went sparse.

Both accept a prunelab checkpoint or a sparse export as CHECKPOINT.

Under ``torchrun`` every rank checks the input (so a bad one fails on every rank alike) and rank 0
alone writes the export (or times the model and writes ``--json``): nothing here is data-parallel,
and ranks timing side by side would compete for the same cores.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from prunelab.cli import checks
from prunelab.training import distributed
from prunelab.errors import CheckpointError, ConfigError
from prunelab.utils.io import atomic_write_json

SUFFIXES = {"sparse": ".sparse.safetensors", "onnx": ".onnx", "dense": ".dense.safetensors"}


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``export`` and ``latency`` to the ``prunelab`` sub-commands."""
    p = sub.add_parser("export", help="write a pruned checkpoint as a compact sparse file, ONNX, or plain dense")
    p.add_argument("checkpoint", help="a prunelab checkpoint (or sparse export)")
    p.add_argument("--format", default="sparse", choices=tuple(SUFFIXES), help="output format (default sparse)")
    p.add_argument("-o", "--out", default=None, help="output file (default: CHECKPOINT's stem + .sparse.safetensors/.onnx/.dense.safetensors)")
    p.add_argument("--opset", type=checks.onnx_opset, default=17, help="ONNX opset (onnx only; 7 to 20 with torch's exporter)")
    p.add_argument("--no-check", action="store_true", help="onnx: skip the comparison with onnxruntime")
    p.add_argument("--sparse-initializers", action="store_true",
                   help="onnx: store mostly-zero weights as ONNX sparse initializers (smaller; onnxruntime reads them)")
    p.set_defaults(func=cmd_export)

    q = sub.add_parser("latency", help="time the dense model against its sparse-kernel copy")
    q.add_argument("checkpoint", help="a prunelab checkpoint (or sparse export)")
    q.add_argument("--batch-sizes", default="1,64", help="comma-separated batch sizes (default 1,64)")
    q.add_argument("--threads", type=checks.count(1), default=None, help="torch and kernel threads (default: torch's current setting)")
    q.add_argument("--warmup", type=checks.count(0), default=20, help="untimed calls per candidate (default 20)")
    q.add_argument("--reps", type=checks.count(1), default=200, help="timed calls per candidate, interleaved (default 200)")
    q.add_argument("--onnx", action="store_true", help="also time onnxruntime on the dense ONNX export")
    q.add_argument("--json", default=None, metavar="PATH", help="also write the results as JSON")
    q.set_defaults(func=cmd_latency)


def load_any(path):
    """A :class:`~prunelab.core.checkpoints.Checkpoint` from a prunelab checkpoint or a sparse export."""
    from safetensors import SafetensorError, safe_open

    from prunelab.core.checkpoints import load_checkpoint
    from prunelab.export import load_sparse

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get("prunelab", "")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: damaged or not a safetensors file ({exc})") from None
    return load_sparse(path) if '"prunelab-sparse"' in raw else load_checkpoint(path)


def _default_out(checkpoint: str, fmt: str) -> Path:
    path = Path(checkpoint)
    stem = path.name
    for suffix in (".sparse.safetensors", ".dense.safetensors", ".safetensors"):
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    return path.with_name(stem + SUFFIXES[fmt])


def cmd_export(args) -> int:
    import gzip

    import torch
    from safetensors.torch import save as safetensors_bytes

    from prunelab.core.checkpoints import save_checkpoint
    from prunelab.export import export_onnx, make_permanent, save_sparse

    checks.input_file(args.checkpoint)
    out = checks.output_file(args.out or _default_out(args.checkpoint, args.format), inputs=[args.checkpoint])
    ckpt = load_any(args.checkpoint)
    model = make_permanent(ckpt.model, ckpt.masks)
    meta = {"source": str(args.checkpoint), "metrics": ckpt.meta.get("metrics", {}), "extra": ckpt.meta.get("extra", {})}
    cfg = getattr(model, "prunelab_config", None) or {}
    if args.format == "onnx" and not cfg.get("in_shape"):
        raise ConfigError("the checkpoint has no model config with an input shape; cannot build an ONNX input")
    if not distributed.is_main():
        return 0   # rank 0 writes the file
    if args.format == "sparse":
        save_sparse(out, model, ckpt.masks, meta=meta)
        state = {f"param/{n}": p.detach().contiguous() for n, p in model.named_parameters()}
        state.update({f"buffer/{n}": b.detach().contiguous() for n, b in model.named_buffers()})
        dense = safetensors_bytes(state)
        size, packed = out.stat().st_size, len(gzip.compress(dense, compresslevel=9))
        print(f"wrote {out}: {size:,} bytes = {size / len(dense):.1%} of dense safetensors ({len(dense):,} bytes); "
              f"gzip -9 of dense: {packed:,} bytes ({packed / len(dense):.1%})")
    elif args.format == "dense":
        save_checkpoint(out, model, None, metrics=meta["metrics"], extra=meta["extra"])
        print(f"wrote {out}: plain dense checkpoint, pruned weights zero, no masks")
    else:
        export_onnx(model, out, (1, *cfg["in_shape"]), opset=args.opset, sparse_initializers=args.sparse_initializers)
        kind = "sparse initializers" if args.sparse_initializers else "dense weights"
        print(f"wrote {out}: {out.stat().st_size:,} bytes (opset {args.opset}, dynamic batch, {kind})")
        if not args.no_check:
            try:
                from prunelab.export import check_onnx

                x = torch.randn(4, *cfg["in_shape"], generator=torch.Generator().manual_seed(0))
                print(f"onnxruntime vs PyTorch, batch 4: max |difference| {check_onnx(model, out, x):.2e}")
            except ConfigError as exc:
                print(f"note: not checked ({exc})")
    return 0


def _batch_sizes(text: str) -> list[int]:
    try:
        sizes = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        sizes = []
    if not sizes or any(s < 1 for s in sizes):
        raise ConfigError(f"--batch-sizes expects positive integers separated by commas, got {text!r}")
    return sizes


def cmd_latency(args) -> int:
    import tempfile

    import torch

    from prunelab.export import export_onnx, interleaved, make_permanent, onnxruntime_session, to_sparse
    from prunelab.export.timing import threads as thread_scope
    from prunelab.core.metrics import summary

    sizes = _batch_sizes(args.batch_sizes)
    checks.input_file(args.checkpoint)
    if args.json:
        checks.output_file(args.json, "--json", inputs=[args.checkpoint])
    ckpt = load_any(args.checkpoint)
    model = make_permanent(ckpt.model, ckpt.masks).eval()
    cfg = getattr(model, "prunelab_config", None) or {}
    if not cfg.get("in_shape"):
        raise ConfigError("the checkpoint has no model config with an input shape")
    if not distributed.is_main():
        return 0   # rank 0 times (ranks timing side by side would share the cores) and writes --json
    threads = args.threads or torch.get_num_threads()
    info = summary(model, ckpt.masks)
    result = {"checkpoint": str(args.checkpoint), "model": cfg.get("name"), "threads": threads,
              "warmup": args.warmup, "reps": args.reps, "sparsity": info["sparsity"],
              "flop_limit": info["theoretical_speedup"], "batches": []}
    with tempfile.TemporaryDirectory() as tmp:
        session = None
        if args.onnx:
            # interleaved with the other engines: spinning onnxruntime workers would take their cores
            session = onnxruntime_session(export_onnx(model, Path(tmp) / "model.onnx", (1, *cfg["in_shape"])), threads,
                                          spinning=False)
        print(f"{cfg.get('name')}: sparsity {info['sparsity']:.2%} of prunable weights, FLOP limit "
              f"{info['theoretical_speedup']:.1f}x; {threads} thread(s), {args.warmup} warm-up + {args.reps} timed "
              "calls each, interleaved, median")
        for batch in sizes:
            x = torch.randn(batch, *cfg["in_shape"], generator=torch.Generator().manual_seed(0))
            sparse = to_sparse(model, batch_size=batch, threads=threads, example_input=x)
            fns = {"dense": lambda: model(x), "sparse": lambda: sparse(x)}
            if session is not None:
                feed = {"input": x.numpy()}
                fns["onnxruntime"] = lambda: session.run(None, feed)
            with thread_scope(threads):
                timed = interleaved(fns, warmup=args.warmup, reps=args.reps)
            row = {"batch": batch, **{f"{k}_us": v["median_us"] for k, v in timed.items()},
                   "speedup": round(timed["dense"]["median_us"] / timed["sparse"]["median_us"], 2),
                   "layers": {e["name"]: e["choice"] for e in sparse.sparse_report["layers"]}}
            result["batches"].append(row)
            ort = f", onnxruntime {row['onnxruntime_us']:.1f} µs" if "onnxruntime_us" in row else ""
            chosen = ", ".join(f"{n}:{c}" for n, c in row["layers"].items())
            print(f"batch {batch:>4}: dense {row['dense_us']:.1f} µs, sparse {row['sparse_us']:.1f} µs "
                  f"({row['speedup']:.2f}x){ort}  [{chosen}]")
    if args.json:
        atomic_write_json(args.json, result, indent=2, finite=True)
    return 0
