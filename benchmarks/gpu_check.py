"""Run prunelab's main paths on one device and print ONE JSON object saying what worked.

Made for a GPU machine (``--device cuda``), runnable on the CPU (``--device cpu``) so the script
itself is tested. Every check runs even when an earlier one failed; a failure is recorded in the
JSON (``ok: false``, the error and the end of its traceback), never raised. The checks:

- ``train_amp``: a small MLP trained with mixed precision (``--amp``, default bf16);
- ``magnitude``: global magnitude pruning to 90 %, then masked retraining with amp: the pruned
  count is exact and pruned weights stay exactly zero;
- ``lobs_calib``: L-OBS at 50 % with calibration data on the device;
- ``ltp``, ``grda``, ``gmp``: a few epochs of each through the harness (``harness.runner.run``
  with ``device=``): dense training, the method's own loop, retraining, evaluation;
- ``export_latency``: ``prunelab.export.to_sparse`` (CPU kernels) equal to the dense model, and
  the dense model's median latency on the device against the sparse copy's on the CPU;
- ``gpt2_lm``: a tiny GPT-2 pruned to 50 % by magnitude and trained on its LM loss with masks
  (skipped, ``ok: null``, when transformers is not installed);
- ``compile_masks``: masks on a ``torch.compile`` wrapper kept exact through training.

Each check reports ``ok``, ``seconds`` and its key numbers (sparsity and whether it is exact,
the devices the tensors ended on, losses). The exit status is 0 when no check failed, 1 otherwise,
2 when the device cannot be used.

Usage:
    python benchmarks/gpu_check.py                     # auto: CUDA when available
    python benchmarks/gpu_check.py --device cpu --quick
    python benchmarks/gpu_check.py --device cuda --out gpu_check.json
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import platform
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

import torch

import prunelab
from prunelab.cli.options import resolve_device
from prunelab.core.prunable import CoverageWarning
from prunelab.errors import PrunelabError

DATA = {"in_shape": [1, 8, 8], "n_train": 1200, "n_test": 400, "val_size": 0.2}
QUICK_DATA = {"in_shape": [1, 8, 8], "n_train": 400, "n_test": 200, "val_size": 0.2}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _devices(*tensors) -> list[str]:
    return sorted({str(t.device) for t in tensors})


def _exact(model, masks, sparsity: float | None = None) -> dict:
    """Whether every pruned entry is zero, and (given ``sparsity``) the pruned count is exact."""
    from prunelab.core.prunable import resolve_parameters

    params = resolve_parameters(model, masks)
    zeros = all(int(torch.count_nonzero(params[n].detach()[~m.to(params[n].device)])) == 0 for n, m in masks.items())
    out = {"sparsity": masks.sparsity(), "pruned_are_zero": zeros,
           "param_devices": _devices(*params.values()), "mask_devices": _devices(*masks.values())}
    if sparsity is not None:
        out["sparsity_exact"] = masks.pruned() == round(sparsity * masks.total())
    return out


class Checks:
    """The checks, sharing one data set and one trained model; each returns its numbers."""

    def __init__(self, device: torch.device, quick: bool, amp: str, compile_backend: str):
        self.device, self.quick, self.amp, self.compile_backend = device, quick, amp, compile_backend
        self.epochs = 1 if quick else 4
        self.data = prunelab.data.load("synthetic", **(QUICK_DATA if quick else DATA))
        torch.manual_seed(0)
        self.model = prunelab.models.create("mlp", self.data.in_shape, self.data.num_classes).to(device)
        self.pruned = None

    def config(self, **fields):
        base = {"epochs": self.epochs, "optimizer": "adam", "lr": 1e-3, "batch_size": 64, "amp": self.amp}
        base.update(fields)
        return prunelab.TrainConfig(**base)

    def train_amp(self) -> dict:
        state = prunelab.train(self.model, self.data, self.config(), progress=False, device=self.device)
        test = prunelab.evaluate(self.model, self.data.test, device=self.device)
        losses = [r["train_loss"] for r in state.history]
        params = list(self.model.parameters())
        return {"ok": all(math.isfinite(v) for v in losses) and _devices(*params) == [str(self.device)],
                "amp": self.amp, "train_loss": losses, "test_top1": test["top1"], "param_devices": _devices(*params),
                "param_dtypes": sorted({str(p.dtype) for p in params})}

    def magnitude(self) -> dict:
        model = copy.deepcopy(self.model)
        masks = prunelab.prune(model, "magnitude", 0.9, device=self.device)
        after_prune = _exact(model, masks, 0.9)
        prunelab.train(model, self.data, self.config(epochs=1), masks=masks, progress=False, device=self.device)
        after_train = _exact(model, masks, 0.9)
        self.pruned = (model, masks)
        top1 = prunelab.evaluate(model, self.data.test, device=self.device)["top1"]
        return {"ok": after_prune["sparsity_exact"] and after_prune["pruned_are_zero"] and after_train["pruned_are_zero"]
                and after_train["param_devices"] == [str(self.device)],
                "after_prune": after_prune, "after_retrain": after_train, "retrained_test_top1": top1}

    def lobs_calib(self) -> dict:
        model = copy.deepcopy(self.model)
        n = 128 if self.quick else 512
        calib = type(self.data.train)(self.data.train.x[:n].to(self.device), self.data.train.y[:n].to(self.device))
        masks = prunelab.prune(model, "lobs", 0.5, calib=calib, device=self.device)
        numbers = _exact(model, masks, 0.5)
        numbers["test_top1"] = prunelab.evaluate(model, self.data.test, device=self.device)["top1"]
        return {"ok": numbers["pruned_are_zero"] and numbers["param_devices"] == [str(self.device)], **numbers}

    def harness(self, method: str, target: float, hparams: dict) -> dict:
        from prunelab.harness.runner import RunSpec, run
        from prunelab.harness.store import Store

        spec = RunSpec(dataset="synthetic", model="mlp", method=method, target=target, hparams=hparams,
                       data_kwargs=QUICK_DATA if self.quick else DATA,
                       dense={"epochs": self.epochs, "optimizer": "adam", "lr": 1e-3, "batch_size": 64, "amp": self.amp},
                       retrain={"epochs": 1, "optimizer": "adam", "lr": 5e-4, "batch_size": 64, "amp": self.amp})
        with tempfile.TemporaryDirectory() as tmp, Store(tmp) as store:
            result = run(spec, store, device=self.device)
        m = result.metrics
        return {"ok": result.info.get("device") == str(self.device) and 0 < m["sparsity"] < 1,
                "run_device": result.info.get("device"), "target": target, "sparsity": m["sparsity"],
                "sparsity_exact": abs(m["sparsity"] - target) <= 0.5 / max(1, m["prunable"]),
                "final_test_top1": m["final_test_top1"], "phase_seconds": result.phase_times}

    def ltp(self) -> dict:
        return self.harness("ltp", 0.8, {"epochs": self.epochs + 1})

    def grda(self) -> dict:
        return self.harness("grda", 0.5, {"epochs": self.epochs, "c": 0.05})

    def gmp(self) -> dict:
        return self.harness("gmp", 0.8, {"epochs": self.epochs + 1})

    def export_latency(self) -> dict:
        from prunelab.export import interleaved, to_sparse

        if self.pruned is None:
            self.magnitude()
        model, masks = self.pruned
        cpu_model = copy.deepcopy(model).cpu().eval()
        x = torch.randn(64, *self.data.in_shape, generator=torch.Generator().manual_seed(0))
        sparse = to_sparse(cpu_model, batch_size=64, policy="always")
        with torch.inference_mode():
            difference = float((sparse(x) - cpu_model(x)).abs().max())
        model.eval()
        x_device = x.to(self.device)

        def dense_on_device():
            model(x_device)
            _sync(self.device)

        reps = 20 if self.quick else 200
        timed = interleaved({"dense_device": dense_on_device, "sparse_cpu": lambda: sparse(x)},
                            warmup=5 if self.quick else 20, reps=reps)
        return {"ok": difference < 1e-4, "max_abs_difference": difference, "batch": 64,
                "median_us": {k: v["median_us"] for k, v in timed.items()},
                "sparse_layers": {e["name"]: e["choice"] for e in sparse.sparse_report["layers"]}}

    def gpt2_lm(self) -> dict:
        try:
            import transformers
        except ImportError:
            return {"ok": None, "skipped": "transformers is not installed"}
        transformers.logging.set_verbosity_error()
        torch.manual_seed(0)
        config = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=500, n_positions=64)
        model = transformers.GPT2LMHeadModel(config).to(self.device)
        with warnings.catch_warnings():   # the embeddings stay dense: said once below, as coverage
            warnings.simplefilter("ignore", CoverageWarning)
            masks = prunelab.prune(model, "magnitude", 0.5, device=self.device)
        ids = torch.randint(0, 500, (64 if self.quick else 256, 32), generator=torch.Generator().manual_seed(1))
        batches = [{"input_ids": ids[i:i + 8], "labels": ids[i:i + 8]} for i in range(0, len(ids), 8)]
        state = prunelab.train(model, batches, self.config(epochs=2, optimizer="adamw"), masks=masks,
                               progress=False, device=self.device)
        numbers = _exact(model, masks, 0.5)
        losses = [r["train_loss"] for r in state.history]
        return {"ok": numbers["sparsity_exact"] and numbers["pruned_are_zero"] and all(map(math.isfinite, losses)),
                "lm_loss": losses, "coverage": masks.coverage(model).line(), **numbers}

    def compile_masks(self) -> dict:
        model = copy.deepcopy(self.model)
        compiled = torch.compile(model, backend=self.compile_backend)
        masks = prunelab.prune(compiled, "magnitude", 0.8, device=self.device)
        prunelab.train(compiled, self.data, self.config(epochs=1), masks=masks, progress=False, device=self.device)
        numbers = _exact(model, masks, 0.8)
        with torch.no_grad():
            x = self.data.test.x[:32].to(self.device)
            same = bool(torch.allclose(compiled(x), model(x), atol=1e-5))
        return {"ok": numbers["sparsity_exact"] and numbers["pruned_are_zero"] and same,
                "backend": self.compile_backend, "wrapper_matches_module": same, **numbers}


CHECKS = ("train_amp", "magnitude", "lobs_calib", "ltp", "grda", "gmp", "export_latency", "gpt2_lm", "compile_masks")


def _run_one(name: str, fn) -> dict:
    t0 = time.perf_counter()
    try:
        out = fn()
    except Exception as exc:   # a failing path is a finding of this script, recorded and not raised
        lines = traceback.format_exc().strip().splitlines()
        out = {"ok": False, "error": f"{type(exc).__name__}: {exc}", "traceback": lines[-6:]}
    out["seconds"] = round(time.perf_counter() - t0, 3)
    return out


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()


def run_checks(device_name: str = "auto", quick: bool = False, amp: str = "bf16", only=None,
               compile_backend: str | None = None) -> dict:
    """Run the checks on the named device and return the report (one JSON-able dict).

    Args:
        device_name: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
        quick: smaller data and budgets (about 20 s on one CPU core).
        amp: mixed precision of every training (``none``, ``bf16``, ``fp16``).
        only: names of the checks to run (default: all of :data:`CHECKS`).
        compile_backend: ``torch.compile`` backend (default: inductor on CUDA, eager elsewhere).
    """
    device = resolve_device(device_name)
    backend = compile_backend or ("inductor" if device.type == "cuda" else "eager")
    report = {"device": str(device), "device_name": _device_name(device), "torch": torch.__version__,
              "cuda": torch.version.cuda, "prunelab": prunelab.__version__, "quick": quick, "amp": amp,
              "threads": torch.get_num_threads(), "checks": {}}
    t0 = time.perf_counter()
    try:
        checks = Checks(device, quick, amp, backend)
    except Exception as exc:
        report.update(ok=False, error=f"setup failed: {type(exc).__name__}: {exc}")
        return report
    for name in only or CHECKS:
        report["checks"][name] = _run_one(name, getattr(checks, name))
    if device.type == "cuda":
        report["max_memory_allocated_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    report["seconds"] = round(time.perf_counter() - t0, 3)
    report["failed"] = [n for n, c in report["checks"].items() if c["ok"] is False]
    report["ok"] = not report["failed"]
    return report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default auto)")
    parser.add_argument("--quick", action="store_true", help="small data and budgets (a test of the script)")
    parser.add_argument("--amp", default="bf16", choices=("none", "bf16", "fp16"))
    parser.add_argument("--only", nargs="+", choices=CHECKS, default=None, help="run these checks only")
    parser.add_argument("--compile-backend", default=None, help="torch.compile backend (default: inductor on "
                                                                "CUDA, eager elsewhere)")
    parser.add_argument("--out", default=None, help="also write the JSON there")
    args = parser.parse_args(argv)
    try:
        report = run_checks(args.device, args.quick, args.amp, args.only, args.compile_backend)
    except PrunelabError as exc:
        print(json.dumps({"ok": False, "device": args.device, "error": str(exc)}))
        return 2
    text = json.dumps(report, indent=1, default=str)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n", encoding="utf-8")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
