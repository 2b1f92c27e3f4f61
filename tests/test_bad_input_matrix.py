"""Bad input never crashes and never destroys data: one row per case, every command and the API.

Each command-line row runs ``prunelab.cli.main.main`` in-process in a directory of prepared files
(a tiny trained checkpoint, damaged and foreign files, suite files) and asserts: exit status 2,
exactly one line on stderr, starting ``prunelab: error:`` and containing the row's needle, and
every file of the directory byte-identical afterwards, with none added or removed.
"""

import hashlib
import math
import os
from pathlib import Path

import pytest
import torch

import prunelab
from prunelab import data, models
from prunelab.cli.main import main
from prunelab.core.checkpoints import load_checkpoint, save_checkpoint
from prunelab.core.masks import Masks
from prunelab.errors import PrunelabError

D = "dense.safetensors"            # mlp trained 1 epoch on digits by `prunelab train`
PRUNED = "pruned.safetensors"      # the same, 50 % pruned
SHAPE = "wrong_shape.safetensors"  # a model for 1x4x4 inputs, recorded as trained on digits
CLASSES = "wrong_classes.safetensors"  # a model for 3 classes, recorded as trained on digits
MISFIT = "misfit.safetensors"      # lenet-300-100 tensors under an mlp config
NODATA = "nodataset.safetensors"   # a checkpoint that does not say its data set
TRUNC = "truncated.safetensors"
GARBAGE = "garbage.safetensors"
EMPTY = "empty.safetensors"
NOMETA = "nometa.safetensors"      # safetensors without prunelab metadata
MASKS = "masks.safetensors"        # a masks file, not a checkpoint
BADJSON = "badjson.safetensors"    # prunelab metadata that is not JSON
OUT = "out.safetensors"            # a file name that does not exist: the normal output
DIR = "subdir"                     # an existing directory
READONLY = "readonly"              # a directory without write permission


def _tiny_checkpoints(root: Path) -> None:
    from safetensors.torch import save_file

    dense = load_checkpoint(root / D)
    masks = prunelab.prune(dense.model, "magnitude", 0.5)
    save_checkpoint(root / PRUNED, dense.model, masks, extra=dense.meta["extra"])
    masks.save(root / MASKS)
    extra = {"dataset": "digits", "normalize": "standard"}
    save_checkpoint(root / SHAPE, models.create("mlp", (1, 4, 4), 10), extra=extra)
    save_checkpoint(root / CLASSES, models.create("mlp", (1, 8, 8), 3), extra=extra)
    save_checkpoint(root / NODATA, models.create("mlp", (1, 8, 8), 10))
    misfit = models.create("lenet-300-100", (1, 8, 8), 10)
    misfit.prunelab_config = models.create("mlp", (1, 8, 8), 10).prunelab_config
    save_checkpoint(root / MISFIT, misfit, extra=extra)
    raw = (root / D).read_bytes()
    (root / TRUNC).write_bytes(raw[: len(raw) // 2])
    (root / GARBAGE).write_bytes(b"\x00not a safetensors file\x00" * 8)
    (root / EMPTY).write_bytes(b"")
    save_file({"w": torch.zeros(2)}, str(root / NOMETA))
    save_file({"w": torch.zeros(2)}, str(root / BADJSON), metadata={"prunelab": "{not json"})


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """The directory every row runs in: the prepared files, made once for the module."""
    root = tmp_path_factory.mktemp("bad-input")
    cwd = os.getcwd()
    os.chdir(root)
    try:
        assert main(["train", "--model", "mlp", "--dataset", "digits", "--epochs", "1", "--quiet", "-o", D]) == 0
    finally:
        os.chdir(cwd)
    _tiny_checkpoints(root)
    (root / DIR).mkdir()
    (root / DIR / "keep.txt").write_text("untouched\n")
    (root / READONLY).mkdir()
    (root / READONLY / "keep.txt").write_text("untouched\n")
    (root / READONLY).chmod(0o555)
    (root / "empty.toml").write_text("")
    (root / "broken.toml").write_text("[[methods]\nname = \n")
    (root / "nomethods.toml").write_text('name = "x"\ndataset = "digits"\nmodels = ["linear"]\ntargets = [0.5]\n'
                                         'seeds = [0]\nbaselines = false\n')
    (root / "badmethod.toml").write_text('name = "x"\ndataset = "digits"\nmodels = ["linear"]\ntargets = [0.5]\n'
                                         'seeds = [0]\n[[methods]]\nname = "nope"\n')
    (root / "badtarget.toml").write_text('name = "x"\ndataset = "digits"\nmodels = ["linear"]\ntargets = [1.5]\n'
                                         'seeds = [0]\n[[methods]]\nname = "magnitude"\n')
    (root / "empty.json").write_text("{}")
    yield root
    (root / READONLY).chmod(0o755)


def _snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


T = ["--epochs", "1", "--quiet"]
TRAIN = ["train", "--model", "mlp", "--dataset", "digits", *T]
PRUNE = ["prune", D, "--sparsity", "0.5"]
LTP = ["ltp", D, "--epochs", "1", "--quiet"]
GRDA = ["grda", "train", "--model", "mlp", "--dataset", "digits", *T]
SEARCH = ["grda", "search", "--model", "mlp", "--dataset", "digits", "--target", "0.5", "--quiet"]
ITER = ["iterate", "--pruning-schedule", "os", "--dataset", "digits", "--epochs", "1", "--rounds", "1", "--quiet"]
DEPTH = ["study", "depth", "--dataset", "digits", "--budget", "smoke", "--quiet", "--no-figure"]
LATENT = ["study", "latent", "--dataset", "digits", "--budget", "smoke", "--quiet", "--no-figure"]
VALLEY = ["study", "valley", D, PRUNED]
BENCH = ["bench", "--dataset", "digits", "--no-report"]

# (id, argv, needle in the error line)
ROWS = [
    # -- train
    ("train-unknown-model", ["train", "--model", "nope", "--dataset", "digits", "-o", OUT], "unknown model 'nope'"),
    ("train-unknown-dataset", ["train", "--model", "mlp", "--dataset", "nope", "-o", OUT], "nope"),
    ("train-model-missing", ["train", "--dataset", "digits", "-o", OUT], "required: --model"),
    ("train-out-missing", ["train", "--model", "mlp"], "required: --out"),
    ("train-unknown-option", [*TRAIN, "--frobnicate", "-o", OUT], "unrecognized arguments: --frobnicate"),
    ("train-epochs-negative", [*TRAIN, "--epochs", "-1", "-o", OUT], "--epochs -1: epochs must be an integer >= 0"),
    ("train-epochs-fraction", [*TRAIN, "--epochs", "1.5", "-o", OUT], "argument --epochs: invalid int value"),
    ("train-epochs-word", [*TRAIN, "--epochs", "many", "-o", OUT], "argument --epochs: invalid int value"),
    ("train-batch-size-0", [*TRAIN, "--batch-size", "0", "-o", OUT], "--batch-size 0: batch_size must be a positive"),
    ("train-lr-0", [*TRAIN, "--lr", "0", "-o", OUT], "--lr 0.0: lr must be a positive number"),
    ("train-lr-negative", [*TRAIN, "--lr", "-0.1", "-o", OUT], "--lr -0.1: lr must be a positive number"),
    ("train-lr-nan", [*TRAIN, "--lr", "nan", "-o", OUT], "argument --lr: expected a finite number, got nan"),
    ("train-lr-inf", [*TRAIN, "--lr", "inf", "-o", OUT], "argument --lr: expected a finite number, got inf"),
    ("train-momentum-negative", [*TRAIN, "--momentum", "-0.5", "-o", OUT], "--momentum -0.5: weight_decay and momentum"),
    ("train-weight-decay-negative", [*TRAIN, "--weight-decay", "-1", "-o", OUT], "--weight-decay -1.0:"),
    ("train-clip-0", [*TRAIN, "--clip-grad-norm", "0", "-o", OUT], "--clip-grad-norm 0.0: clip_grad_norm must be > 0"),
    ("train-step-epochs-0", [*TRAIN, "--step-epochs", "0", "-o", OUT], "--step-epochs 0: step_epochs must be"),
    ("train-gamma-negative", [*TRAIN, "--gamma", "-1", "-o", OUT], "--gamma -1.0: gamma must be a positive"),
    ("train-eval-batch-0", [*TRAIN, "--eval-batch-size", "0", "-o", OUT], "--eval-batch-size 0: eval_batch_size"),
    ("train-betas-out-of-range", [*TRAIN, "--betas", "2", "0.9", "-o", OUT], "--betas 2.0 0.9: betas must be two"),
    ("train-betas-one-value", [*TRAIN, "--betas", "0.9", "-o", OUT], "argument --betas: expected 2 arguments"),
    ("train-optimizer-unknown", [*TRAIN, "--optimizer", "nope", "-o", OUT], "argument --optimizer: invalid choice"),
    ("train-schedule-unknown", [*TRAIN, "--schedule", "nope", "-o", OUT], "argument --schedule: invalid choice"),
    ("train-nesterov-adam", [*TRAIN, "--nesterov", "--optimizer", "adam", "-o", OUT], "nesterov needs optimizer 'sgd'"),
    ("train-val-size-fraction-count", [*TRAIN, "--val-size", "2.5", "-o", OUT], "argument --val-size: expected a sample count"),
    ("train-val-size-negative", [*TRAIN, "--val-size", "-1", "-o", OUT], "argument --val-size: expected a sample count"),
    ("train-val-size-nan", [*TRAIN, "--val-size", "nan", "-o", OUT], "argument --val-size"),
    ("train-val-size-too-large", [*TRAIN, "--val-size", "100000", "-o", OUT], "val_size=100000 is out of range"),
    ("train-seed-negative", [*TRAIN, "--seed", "-1", "-o", OUT], "argument --seed: expected a whole number in [0,"),
    ("train-seed-huge", [*TRAIN, "--seed", str(2**64), "-o", OUT], "argument --seed"),
    ("train-normalize-unknown", [*TRAIN, "--normalize", "nope", "-o", OUT], "argument --normalize: invalid choice"),
    ("train-model-arg-syntax", [*TRAIN, "--model-arg", "novalue", "-o", OUT], "--model-arg"),
    ("train-model-arg-unknown", [*TRAIN, "--model-arg", "nosuch=1", "-o", OUT], "nosuch"),
    ("train-data-dir-missing", [*TRAIN, "--data-dir", "nodir", "-o", OUT], "argument --data-dir: no such directory: 'nodir'"),
    ("train-data-dir-is-file", [*TRAIN, "--data-dir", D, "-o", OUT], f"argument --data-dir: not a directory: '{D}'"),
    ("bench-data-dir-missing", [*BENCH, "--data-dir", "nodir"], "argument --data-dir"),
    ("train-out-directory", [*TRAIN, "-o", DIR], f"--out {DIR} is a directory"),
    ("train-out-dot", [*TRAIN, "-o", "."], "--out . is a directory"),
    ("train-out-empty", [*TRAIN, "-o", ""], "--out: empty file name"),
    ("train-out-parent-missing", [*TRAIN, "-o", "no/such/dir/x.safetensors"], "directory no/such/dir does not exist"),
    ("train-out-parent-is-file", [*TRAIN, "-o", f"{D}/x.safetensors"], f"{D} is not a directory"),
    ("train-out-unwritable-proc", [*TRAIN, "-o", "/proc/prunelab-test.safetensors"], "cannot write in /proc"),
    ("train-out-readonly-dir", [*TRAIN, "-o", f"{READONLY}/x.safetensors"], "cannot write in readonly"),
    ("train-diverges", [*TRAIN, "--lr", "1e30", "-o", OUT], "training diverged"),
    # -- prune
    ("prune-missing", ["prune", "MISSING.safetensors", "--sparsity", "0.5", "-o", OUT], "no such checkpoint file"),
    ("prune-directory", ["prune", DIR, "--sparsity", "0.5", "-o", OUT], f"{DIR} is a directory, not a checkpoint"),
    ("prune-truncated", ["prune", TRUNC, "--sparsity", "0.5", "-o", OUT], "damaged or not a safetensors"),
    ("prune-garbage", ["prune", GARBAGE, "--sparsity", "0.5", "-o", OUT], "damaged or not a safetensors"),
    ("prune-empty-file", ["prune", EMPTY, "--sparsity", "0.5", "-o", OUT], "damaged or not a safetensors"),
    ("prune-no-metadata", ["prune", NOMETA, "--sparsity", "0.5", "-o", OUT], "without prunelab metadata"),
    ("prune-metadata-not-json", ["prune", BADJSON, "--sparsity", "0.5", "-o", OUT], "not valid JSON"),
    ("prune-masks-file", ["prune", MASKS, "--sparsity", "0.5", "-o", OUT], "not a prunelab checkpoint"),
    ("prune-wrong-model-file", ["prune", MISFIT, "--sparsity", "0.5", "-o", OUT], "in the file but"),
    ("prune-sparsity-1", [*PRUNE[:3], "1", "-o", OUT], "argument --sparsity: expected a fraction in [0, 1), got 1"),
    ("prune-sparsity-negative", [*PRUNE[:3], "-0.1", "-o", OUT], "argument --sparsity"),
    ("prune-sparsity-nan", [*PRUNE[:3], "nan", "-o", OUT], "argument --sparsity"),
    ("prune-sparsity-word", [*PRUNE[:3], "half", "-o", OUT], "argument --sparsity"),
    ("prune-sparsity-missing", ["prune", D, "-o", OUT], "--sparsity is required unless --pattern N:M"),
    ("prune-pattern-bad", [*PRUNE, "--pattern", "4:2", "-o", OUT], "argument --pattern: expected N:M with 1 <= N < M"),
    ("prune-pattern-word", [*PRUNE, "--pattern", "half", "-o", OUT], "argument --pattern: expected N:M"),
    ("prune-pattern-contradicts-sparsity", [*PRUNE[:3], "0.9", "--pattern", "2:4", "-o", OUT],
     "pattern 2:4 prunes 0.5 of each layer's weights; pass sparsity=0.5, got 0.9"),
    ("prune-pattern-unsupported", ["prune", D, "--pattern", "2:4", "--method", "feta", "-o", OUT],
     "FeTa does not offer N:M patterns"),
    ("prune-unknown-method", [*PRUNE, "--method", "nope", "-o", OUT], "unknown method 'nope'"),
    ("prune-training-method", [*PRUNE, "--method", "gmp", "-o", OUT], "trains while pruning"),
    ("prune-unknown-hparam", [*PRUNE, "--hparam", "nosuch=1", "-o", OUT], "has no hyperparameter nosuch"),
    ("prune-bad-hparam-value", [*PRUNE, "--hparam", "scope=nope", "-o", OUT], "unknown scope 'nope'"),
    ("prune-calib-0", [*PRUNE, "--method", "lobs", "--calib-samples", "0", "-o", OUT], "argument --calib-samples"),
    ("prune-calib-negative", [*PRUNE, "--method", "lobs", "--calib-samples", "-5", "-o", OUT], "expected a whole number >= 1"),
    ("prune-retrain-epochs-negative", [*PRUNE, "--retrain-epochs", "-3", "-o", OUT], "--retrain-epochs -3: epochs must"),
    ("prune-retrain-lr-0", [*PRUNE, "--retrain-lr", "0", "-o", OUT], "--retrain-lr 0.0: lr must be"),
    ("prune-out-is-input", [*PRUNE, "-o", D], f"--out {D} is also the input {D}"),
    ("prune-out-is-input-spelled-otherwise", [*PRUNE, "-o", f"./{DIR}/../{D}"], "refusing to overwrite it"),
    ("prune-out-dot", [*PRUNE, "-o", "."], "--out . is a directory"),
    ("prune-out-parent-missing", [*PRUNE, "-o", "no/such/x.safetensors"], "does not exist; create it first"),
    ("prune-wrong-shape-eval", ["prune", SHAPE, "--sparsity", "0.5", "--eval", "-o", OUT],
     "takes inputs of shape (1, 4, 4) in 10 classes, but digits has inputs of shape (1, 8, 8)"),
    ("prune-wrong-shape-lobs", ["prune", SHAPE, "--sparsity", "0.5", "--method", "lobs", "-o", OUT], "(1, 4, 4)"),
    ("prune-wrong-shape-retrain", ["prune", SHAPE, "--sparsity", "0.5", "--retrain-epochs", "1", "-o", OUT], "(1, 4, 4)"),
    ("prune-wrong-classes", ["prune", CLASSES, "--sparsity", "0.5", "--eval", "-o", OUT], "in 3 classes, but digits"),
    ("prune-retrain-diverges", [*PRUNE, "--retrain-epochs", "1", "--retrain-lr", "1e30", "--quiet", "-o", OUT],
     "training diverged"),
    ("prune-no-dataset-recorded", ["prune", NODATA, "--sparsity", "0.5", "--eval", "-o", OUT], "pass --dataset"),
    # -- eval and info
    ("eval-missing", ["eval", "MISSING.safetensors"], "no such checkpoint file"),
    ("eval-truncated", ["eval", TRUNC], "damaged"),
    ("eval-wrong-shape", ["eval", SHAPE], "(1, 4, 4)"),
    ("eval-wrong-classes", ["eval", CLASSES], "in 3 classes"),
    ("eval-unknown-split", ["eval", D, "--split", "nope"], "argument --split: invalid choice"),
    ("eval-unknown-dataset", ["eval", D, "--dataset", "nope"], "nope"),
    ("info-nothing-of-that-name", ["info", "nosuch"], "no such checkpoint file, nor a method name"),
    ("info-directory", ["info", DIR], "is a directory, not a checkpoint file"),
    ("info-garbage", ["info", GARBAGE], "damaged"),
    ("info-empty", ["info", EMPTY], "damaged"),
    # -- demo
    ("demo-epochs-negative", ["demo", "--dataset", "digits", "--epochs", "-1"], "--epochs -1"),
    ("demo-retrain-epochs-negative", ["demo", "--dataset", "digits", "--retrain-epochs", "-1"], "--retrain-epochs -1"),
    ("demo-lr-nan", ["demo", "--dataset", "digits", "--lr", "nan"], "argument --lr"),
    ("demo-seed-negative", ["demo", "--dataset", "digits", "--seed", "-2"], "argument --seed"),
    ("demo-diverges", ["demo", "--dataset", "digits", "--epochs", "1", "--lr", "1e30"], "training diverged"),
    ("demo-unknown-dataset", ["demo", "--dataset", "nope", "--epochs", "1"], "nope"),
    # -- bench and report
    ("bench-threads-0", [*BENCH, "--threads", "0"], "argument --threads: expected a whole number >= 1"),
    ("bench-suite-file-missing", [*BENCH, "--suite", "nosuch.toml"], "nosuch.toml: no such suite file"),
    ("bench-suite-directory", [*BENCH, "--suite", f"{DIR}/"], "is a directory, not a suite file"),
    ("bench-suite-empty", [*BENCH, "--suite", "empty.toml"], "empty.toml"),
    ("bench-suite-broken", [*BENCH, "--suite", "broken.toml"], "broken.toml"),
    ("bench-suite-no-methods", [*BENCH, "--suite", "nomethods.toml"], "nomethods.toml"),
    ("bench-suite-unknown-method", [*BENCH, "--suite", "badmethod.toml"], "nope"),
    ("bench-suite-bad-target", [*BENCH, "--suite", "badtarget.toml"], "1.5"),
    ("bench-suite-empty-json", [*BENCH, "--suite", "empty.json"], "empty.json"),
    ("bench-suite-unknown-name", [*BENCH, "--suite", "nosuchsuite"], "nosuchsuite"),
    ("bench-out-is-file", [*BENCH, "-o", D], f"--out {D} exists and is not a directory"),
    ("bench-out-under-a-file", [*BENCH, "-o", f"{D}/out"], f"--out {D}/out: {D} is not a directory"),
    ("report-missing", ["report", "nodir"], "nodir holds no results.sqlite; run `prunelab bench --out nodir` first"),
    ("report-file", ["report", D], f"{D} holds no results.sqlite"),
    ("report-no-store", ["report", DIR], "holds no results.sqlite"),
    # -- iterate and pqi
    ("iterate-unknown-schedule", [*ITER[:1], "--pruning-schedule", "nope", "-o", "it"], "argument --pruning-schedule"),
    ("iterate-limit-0", [*ITER, "--limit", "0", "-o", "it"], "argument --limit: expected a whole number >= 1"),
    ("iterate-target-1", [*ITER, "--target", "1", "-o", "it"], "argument --target"),
    ("iterate-rounds-negative", [*ITER, "--rounds", "-1", "-o", "it"], "--rounds -1: rounds must be"),
    ("iterate-rate-0", [*ITER, "--rate", "0", "-o", "it"], "--rate 0.0: rate must be in (0, 1)"),
    ("iterate-rate-1", [*ITER, "--rate", "1", "-o", "it"], "--rate 1.0"),
    ("iterate-p-above-q", [*ITER, "--p", "2", "--q", "1", "-o", "it"], "0 < p < q"),
    ("iterate-sap-beta-0", ["iterate", "--pruning-schedule", "sap", "--dataset", "digits", "--sap-beta", "0", "-o", "it"],
     "--sap-beta 0.0: beta must be in (0, 1]"),
    ("iterate-sap-gamma-0", ["iterate", "--pruning-schedule", "sap", "--dataset", "digits", "--sap-gamma", "0", "-o", "it"],
     "--sap-gamma 0.0"),
    ("iterate-diverges", [*ITER, "--model", "mlp", "--lr", "1e30", "-o", "it"], "training diverged"),
    ("iterate-threads-0", [*ITER, "--threads", "0", "-o", "it"], "argument --threads"),
    ("iterate-epochs-negative", [*ITER, "--epochs", "-1", "-o", "it"], "--epochs -1"),
    ("iterate-out-is-file", [*ITER, "-o", D], f"--out {D} exists and is not a directory"),
    ("iterate-out-under-a-file", [*ITER, "-o", f"{D}/it/rounds"], f"{D} is not a directory"),
    ("pqi-missing", ["pqi", "MISSING.safetensors"], "no such checkpoint file"),
    ("pqi-p-0", ["pqi", D, "--p", "0"], "0 < p < q"),
    ("pqi-p-nan", ["pqi", D, "--p", "nan"], "argument --p"),
    ("pqi-truncated", ["pqi", TRUNC], "damaged"),
    # -- ltp
    ("ltp-wrong-shape", ["ltp", SHAPE, "--epochs", "1", "-o", OUT], "(1, 4, 4)"),
    ("ltp-already-pruned", ["ltp", PRUNED, "--epochs", "1", "-o", OUT], "already pruned"),
    ("ltp-out-is-input", [*LTP, "-o", D], "refusing to overwrite it"),
    ("ltp-target-compression-below-1", [*LTP, "--target-compression", "0.5", "-o", OUT], "argument --target-compression"),
    ("ltp-min-accuracy-above-1", [*LTP, "--min-accuracy", "1.5", "-o", OUT], "argument --min-accuracy"),
    ("ltp-exact-without-target", [*LTP, "--exact", "-o", OUT], "--exact needs --target-compression"),
    ("ltp-check-every-0", [*LTP, "--check-every", "0", "-o", OUT], "--check-every"),
    ("ltp-finetune-epochs-negative", [*LTP, "--finetune-epochs", "-1", "-o", OUT], "--finetune-epochs"),
    ("ltp-temperature-0", [*LTP, "--temperature", "0", "-o", OUT], "--temperature 0.0: temperature must be > 0"),
    ("ltp-threshold-lr-negative", [*LTP, "--threshold-lr", "-1", "-o", OUT], "--threshold-lr -1.0"),
    ("ltp-penalty-weight-negative", [*LTP, "--penalty-weight", "-1", "-o", OUT], "--penalty-weight -1.0"),
    ("ltp-init-quantile-1", [*LTP, "--threshold-init-quantile", "1", "-o", OUT], "--threshold-init-quantile 1.0"),
    ("ltp-penalty-unknown", [*LTP, "--penalty", "l3", "-o", OUT], "argument --penalty: invalid choice"),
    ("ltp-trail-dir-is-file", [*LTP, "--trail-dir", D, "-o", OUT], f"--trail-dir {D} exists and is not a directory"),
    ("ltp-diverges", [*LTP, "--lr", "1e30", "-o", OUT], "training diverged"),
    ("ltp-empty-validation", [*LTP, "--val-size", "0", "-o", OUT], "validation split, which is empty"),
    # -- grda
    ("grda-out-directory", [*GRDA, "-o", DIR], f"--out {DIR} is a directory"),
    ("grda-out-parent-missing", [*GRDA, "-o", "no/such/g.safetensors"], "does not exist"),
    ("grda-c-negative", [*GRDA, "--c", "-1", "-o", OUT], "--c -1.0: GRDA c must be >= 0"),
    ("grda-mu-0", [*GRDA, "--mu", "0", "-o", OUT], "--mu 0.0: GRDA mu must be > 0"),
    ("grda-lr-nan", [*GRDA, "--lr", "nan", "-o", OUT], "argument --lr"),
    ("grda-diverges", [*GRDA, "--lr", "1e30", "-o", OUT], "training diverged"),
    ("grda-schedule-unknown", [*GRDA, "--grda-schedule", "nope", "-o", OUT], "argument --grda-schedule"),
    ("grda-search-target-1", [*SEARCH[:-3], "--target", "1"], "argument --target"),
    ("grda-search-iterations-0", [*SEARCH, "--iterations", "0"], "argument --iterations"),
    ("grda-search-tolerance-0", [*SEARCH, "--tolerance", "0"], "argument --tolerance: expected a finite number > 0"),
    ("grda-search-c-low-0", [*SEARCH, "--c-low", "0"], "argument --c-low"),
    ("grda-search-bracket-reversed", [*SEARCH, "--c-low", "0.5", "--c-high", "0.1"], "--c-low 0.5 must be below --c-high 0.1"),
    ("grda-search-mu-negative", [*SEARCH, "--mu", "-1"], "--mu -1.0"),
    # -- study
    ("valley-missing", ["study", "valley", "MISSING.safetensors", D], "no such checkpoint file"),
    ("valley-different-models", ["study", "valley", D, CLASSES], "hold different models"),
    ("valley-wrong-shape", ["study", "valley", SHAPE, SHAPE], "(1, 4, 4)"),
    ("valley-points-1", [*VALLEY, "--points", "1"], "argument --points: expected a whole number >= 2"),
    ("valley-extend-negative", [*VALLEY, "--extend", "-1"], "argument --extend"),
    ("valley-splits-unknown", [*VALLEY, "--splits", "nope"], "--splits takes a comma list"),
    ("valley-max-samples-0", [*VALLEY, "--max-samples", "0"], "argument --max-samples"),
    ("valley-plot-is-input", [*VALLEY, "--plot", D], f"--plot {D} is also the input"),
    ("valley-plot-directory", [*VALLEY, "--plot", DIR], f"--plot {DIR} is a directory"),
    ("valley-json-is-plot", [*VALLEY, "--plot", "v.png", "--json", "v.png"], "--json v.png is also where another output goes (v.png)"),
    ("depth-no-model", DEPTH, "name a model"),
    ("depth-model-and-checkpoint", [*DEPTH, "--model", "mlp", "--checkpoint", D], "not both"),
    ("depth-checkpoint-missing", [*DEPTH, "--checkpoint", "MISSING.safetensors"], "no such checkpoint file"),
    ("depth-checkpoint-wrong-shape", [*DEPTH, "--checkpoint", SHAPE], "(1, 4, 4)"),
    ("depth-budget-unknown", [*DEPTH, "--model", "mlp", "--budget", "nope"], "unknown --budget 'nope'"),
    ("depth-epochs-0", [*DEPTH, "--model", "mlp", "--epochs", "0"], "argument --epochs: expected a whole number >= 1"),
    ("depth-lr-0", [*DEPTH, "--model", "mlp", "--lr", "0"], "argument --lr"),
    ("depth-sparsities-1", [*DEPTH, "--model", "mlp", "--sparsities", "0.5,1"], "sparsities must be fractions"),
    ("depth-seeds-negative", [*DEPTH, "--model", "mlp", "--seeds", "0", "-1"], "argument --seeds"),
    ("depth-threads-0", [*DEPTH, "--model", "mlp", "--threads", "0"], "argument --threads"),
    ("depth-out-is-file", [*DEPTH, "--model", "mlp", "-o", D], f"--out {D} exists and is not a directory"),
    ("latent-no-model", LATENT, "name a model"),
    ("latent-k-word", [*LATENT, "--model", "fc", "--k", "ten"], "--k expects integers or 'full'"),
    ("latent-id-k-0", [*LATENT, "--model", "fc", "--id-k", "0", "5"], "argument --id-k"),
    # -- export and latency
    ("export-missing", ["export", "MISSING.safetensors"], "no such checkpoint file"),
    ("export-truncated", ["export", TRUNC, "-o", OUT], "damaged"),
    ("export-out-is-input", ["export", PRUNED, "-o", PRUNED], "refusing to overwrite it"),
    ("export-out-directory", ["export", PRUNED, "-o", DIR], f"--out {DIR} is a directory"),
    ("export-out-parent-missing", ["export", PRUNED, "-o", "no/such/x.safetensors"], "does not exist"),
    ("export-format-unknown", ["export", PRUNED, "--format", "nope"], "argument --format: invalid choice"),
    ("export-opset-too-old", ["export", PRUNED, "--format", "onnx", "--opset", "3", "-o", "x.onnx"],
     "argument --opset: expected a whole number in [7,"),
    ("export-opset-too-new", ["export", PRUNED, "--format", "onnx", "--opset", "99", "-o", "x.onnx"], "argument --opset"),
    ("latency-missing", ["latency", "MISSING.safetensors"], "no such checkpoint file"),
    ("latency-batch-sizes-0", ["latency", PRUNED, "--batch-sizes", "0"], "--batch-sizes expects positive integers"),
    ("latency-batch-sizes-word", ["latency", PRUNED, "--batch-sizes", "one"], "--batch-sizes expects positive integers"),
    ("latency-reps-0", ["latency", PRUNED, "--reps", "0"], "argument --reps"),
    ("latency-warmup-negative", ["latency", PRUNED, "--warmup", "-1"], "argument --warmup"),
    ("latency-threads-0", ["latency", PRUNED, "--threads", "0"], "argument --threads"),
    ("latency-json-is-input", ["latency", PRUNED, "--json", PRUNED], "refusing to overwrite it"),
    ("latency-json-directory", ["latency", PRUNED, "--json", DIR], f"--json {DIR} is a directory"),
    # -- the parser itself
    ("unknown-command", ["frobnicate"], "invalid choice: 'frobnicate'"),
]


def _skip_reason(case: str) -> str | None:
    if case == "train-out-readonly-dir" and os.geteuid() == 0:
        return "root writes into a read-only directory; /proc covers an unwritable place"
    if case == "train-out-unwritable-proc" and not os.path.isdir("/proc"):
        return "no /proc here"
    return None


@pytest.mark.parametrize("case,argv,needle", ROWS, ids=[row[0] for row in ROWS])
def test_cli_bad_input_is_one_line_exit_2_and_touches_nothing(case, argv, needle, workdir, capsys, monkeypatch):
    if _skip_reason(case):
        pytest.skip(_skip_reason(case))
    monkeypatch.chdir(workdir)
    before = _snapshot(workdir)
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert code == 2, f"exit {code}; stdout {out!r}; stderr {err!r}"
    assert err.startswith("prunelab: error: ") and err.endswith("\n") and err.count("\n") == 1, err
    assert needle in err, err
    assert _snapshot(workdir) == before


def _commands(parser, prefix=()) -> set[tuple[str, ...]]:
    """Every command path of the parser: ("train",), ("grda", "search"), ..."""
    import argparse

    found = set()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found |= _commands(sub, (*prefix, name)) or {(*prefix, name)}
    return found


def test_matrix_covers_every_command():
    from prunelab.cli.main import build_parser

    commands = _commands(build_parser())
    covered = {tuple(row[1][:2]) if (row[1][0],) not in commands else (row[1][0],) for row in ROWS}
    assert commands - covered == set()
    assert len(ROWS) >= 80 and len({row[0] for row in ROWS}) == len(ROWS)


# -- the public API ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def api(workdir):
    """A trained model, its data, and the damaged files of :func:`workdir`."""
    ckpt = load_checkpoint(workdir / D)
    return {"model": ckpt.model, "data": data.load("digits", limit=64), "dir": workdir}


API_ROWS = [
    ("prune-unknown-method", lambda a: prunelab.prune(a["model"], "nope", 0.5)),
    ("prune-sparsity-1", lambda a: prunelab.prune(a["model"], "magnitude", 1.0)),
    ("prune-sparsity-negative", lambda a: prunelab.prune(a["model"], "magnitude", -0.1)),
    ("prune-sparsity-nan", lambda a: prunelab.prune(a["model"], "magnitude", math.nan)),
    ("prune-sparsity-string", lambda a: prunelab.prune(a["model"], "magnitude", "half")),
    ("prune-training-method", lambda a: prunelab.prune(a["model"], "gmp", 0.5)),
    ("prune-unknown-hparam", lambda a: prunelab.prune(a["model"], "magnitude", 0.5, nosuch=1)),
    ("prune-lobs-without-calibration", lambda a: prunelab.prune(a["model"], "lobs", 0.5)),
    ("prune-masks-of-another-model", lambda a: prunelab.prune(
        a["model"], "magnitude", 0.5, masks=Masks.ones(models.create("mlp", (1, 4, 4), 10)))),
    ("trainconfig-epochs-negative", lambda a: prunelab.TrainConfig(epochs=-1)),
    ("trainconfig-batch-size-0", lambda a: prunelab.TrainConfig(batch_size=0)),
    ("trainconfig-lr-nan", lambda a: prunelab.TrainConfig(lr=math.nan)),
    ("trainconfig-optimizer-unknown", lambda a: prunelab.TrainConfig(optimizer="nope")),
    ("trainconfig-step-epochs-0", lambda a: prunelab.TrainConfig(step_epochs=0)),
    ("trainconfig-betas", lambda a: prunelab.TrainConfig(betas=(1.5, 0.9))),
    ("trainconfig-unknown-key", lambda a: prunelab.TrainConfig.from_dict({"epochz": 1})),
    ("train-wrong-shape-data", lambda a: prunelab.train(
        models.create("mlp", (1, 4, 4), 10), a["data"], prunelab.TrainConfig(epochs=1), progress=False)),
    ("train-not-data", lambda a: prunelab.train(a["model"], "not data", prunelab.TrainConfig(epochs=1), progress=False)),
    ("evaluate-batch-size-0", lambda a: prunelab.evaluate(a["model"], a["data"].test, batch_size=0)),
    ("evaluate-wrong-shape-data", lambda a: prunelab.evaluate(models.create("mlp", (1, 4, 4), 10), a["data"].test)),
    ("load-checkpoint-missing", lambda a: load_checkpoint(a["dir"] / "MISSING.safetensors")),
    ("load-checkpoint-directory", lambda a: load_checkpoint(a["dir"] / DIR)),
    ("load-checkpoint-truncated", lambda a: load_checkpoint(a["dir"] / TRUNC)),
    ("load-checkpoint-garbage", lambda a: load_checkpoint(a["dir"] / GARBAGE)),
    ("load-checkpoint-empty", lambda a: load_checkpoint(a["dir"] / EMPTY)),
    ("load-checkpoint-no-metadata", lambda a: load_checkpoint(a["dir"] / NOMETA)),
    ("load-checkpoint-bad-json", lambda a: load_checkpoint(a["dir"] / BADJSON)),
    ("load-checkpoint-masks-file", lambda a: load_checkpoint(a["dir"] / MASKS)),
    ("load-checkpoint-misfit", lambda a: load_checkpoint(a["dir"] / MISFIT)),
    ("load-checkpoint-into-other-model", lambda a: load_checkpoint(a["dir"] / D, models.create("mlp", (1, 4, 4), 10))),
    ("masks-load-missing", lambda a: Masks.load(a["dir"] / "MISSING.safetensors")),
    ("masks-load-garbage", lambda a: Masks.load(a["dir"] / GARBAGE)),
    ("masks-load-truncated", lambda a: Masks.load(a["dir"] / TRUNC)),
    ("masks-of-other-model-applied", lambda a: Masks.load(a["dir"] / MASKS).apply(models.create("mlp", (1, 4, 4), 10))),
    ("data-load-unknown", lambda a: data.load("nope")),
    ("data-load-val-size-2.5", lambda a: data.load("digits", val_size=2.5)),
    ("data-load-val-size-negative", lambda a: data.load("digits", val_size=-1)),
    ("data-load-limit-0", lambda a: data.load("digits", limit=0)),
    ("data-load-seed-negative", lambda a: data.load("digits", seed=-1)),
    ("data-load-normalize-unknown", lambda a: data.load("digits", normalize="nope")),
    ("data-load-unknown-option", lambda a: data.load("digits", nosuch=1)),
    ("data-load-data-dir-missing", lambda a: data.load("fashion-mnist", data_dir=a["dir"] / "nodir")),
    ("models-create-unknown", lambda a: models.create("nope", (1, 8, 8), 10)),
    ("models-create-zero-shape", lambda a: models.create("mlp", (0, 8, 8), 10)),
    ("models-create-zero-classes", lambda a: models.create("mlp", (1, 8, 8), 0)),
    ("models-create-unknown-option", lambda a: models.create("mlp", (1, 8, 8), 10, nosuch=1)),
]


API_PARAMS = [pytest.param(*row, id=row[0]) for row in API_ROWS]


@pytest.mark.parametrize("case,call", API_PARAMS)
def test_api_bad_input_raises_prunelab_error(case, call, api):
    before = _snapshot(api["dir"])
    with pytest.raises(PrunelabError) as info:
        call(api)
    message = str(info.value)
    assert message and "\n" not in message.strip()
    assert _snapshot(api["dir"]) == before
