"""``prunelab iterate``, ``prunelab ltp`` and ``prunelab grda train`` killed with SIGKILL at a
seeded random point, then rerun with the same command, end with the same files as an
uninterrupted run; a killed run leaves only whole files under final names (and perhaps a
temporary ``.NAME.PID.tmp``), never a half-written file.

The uninterrupted run is made in this process (same seeds, one thread), the killed run and the
rerun as subprocesses, on the digits data with one to three epochs. In the killed run every file
is written in two halves 0.2 s apart, so that a kill can land in the middle of a write.
"""

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from prunelab.cli.main import main
from prunelab.core.checkpoints import read_checkpoint

pytestmark = pytest.mark.slow

#: prunelab.utils.io.atomic_path's temporary files, and the command line's probe of a writable folder.
TEMP_NAME = re.compile(r"^\.(.+\.\d+\.tmp|prunelab-write-check-.+)$")
#: wall-clock measurements differ between runs; everything else must be identical.
TIMING_KEY = re.compile(r"seconds|phase_times|_time")

#: ``python -c`` program: the prunelab command line, with every safetensors and atomic JSON write
#: made in two halves with a pause between them (a kill then finds a half-written temporary file).
SLOW_WRITES = """
import pathlib, sys, time
import safetensors.torch

def halves(path, data):
    with open(path, "wb") as handle:
        handle.write(data[: len(data) // 2])
        handle.flush()
        time.sleep(0.2)
        handle.write(data[len(data) // 2:])
    return len(data)

safetensors.torch.save_file = lambda tensors, filename, metadata=None: halves(
    filename, safetensors.torch.save(tensors, metadata=metadata))
pathlib.Path.write_bytes = lambda self, data: halves(self, bytes(data))
from prunelab.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


def _env():
    return dict(os.environ, PYTHONPATH=str(Path(__file__).parents[1] / "src"), PRUNELAB_PROGRESS="0",
                OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")


def _without_timings(obj):
    if isinstance(obj, dict):
        return {k: _without_timings(v) for k, v in obj.items() if not TIMING_KEY.search(k)}
    if isinstance(obj, list):
        return [_without_timings(v) for v in obj]
    return obj


def _plain(document, base: Path):
    return _without_timings(json.loads(json.dumps(document).replace(str(base), "<run>")))


def _outputs(base: Path) -> dict:
    """Every final file under the run folder ``base``, read whole: tensors and metadata of a
    checkpoint, the document of a JSON file (timings left out, ``base`` written ``<run>``).
    Fails on a half-written file or a stray hidden file."""
    found = {}
    for path in sorted(base.rglob("*")):
        if path.is_dir() or TEMP_NAME.match(path.name):
            continue
        key = str(path.relative_to(base))
        if path.suffix == ".safetensors":
            tensors, meta = read_checkpoint(path)   # CheckpointError if partial
            found[key] = (tensors, _plain(meta, base))
        elif path.suffix == ".json":
            found[key] = _plain(json.loads(path.read_text()), base)
        else:
            raise AssertionError(f"unexpected file {path}")
    return found


def _assert_same(got: dict, want: dict) -> None:
    assert sorted(got) == sorted(want)
    for key, value in want.items():
        if isinstance(value, tuple):
            tensors, meta = got[key]
            assert sorted(tensors) == sorted(value[0]), key
            for name, t in value[0].items():
                assert torch.equal(tensors[name], t), f"{key}: {name} differs"
            assert meta == value[1], key
        else:
            assert got[key] == value, key


def _files(base: Path) -> tuple[int, int]:
    """(final files, temporary files) under ``base`` now."""
    names = [p.name for p in base.rglob("*") if p.is_file()] if base.exists() else []
    temps = sum(bool(TEMP_NAME.match(n)) for n in names)
    return len(names) - temps, temps


def _kill_and_rerun(argv: list[str], base: Path, seed: int, n_files: int, seconds: float) -> tuple[dict, int]:
    """Run ``prunelab argv`` (writing ``n_files`` files under ``base`` in about ``seconds``) in a
    subprocess and SIGKILL it at a seeded random point of its progress: in the middle of writing
    its k-th file, or a random time after its k-th file is complete. Check that it left only
    whole files, then rerun ``python -m prunelab argv`` to the end. When the run ends before its
    point comes, another point is drawn (three tries).

    Returns:
        What the killed run left (``_outputs(base)``) and how many temporary files.
    """
    rng = random.Random(seed)
    for _ in range(3):
        k, mid_write = rng.randrange(n_files), rng.random() < 0.5
        delay = rng.uniform(0, 0.05) if mid_write else rng.uniform(0, seconds / n_files)
        proc = subprocess.Popen([sys.executable, "-c", SLOW_WRITES, *argv], stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True, env=_env())
        killed, reached = False, None
        while proc.poll() is None:
            done, writing = _files(base)
            if reached is None and done >= k and (writing or not mid_write):
                reached = time.perf_counter()
            if reached is not None and time.perf_counter() - reached >= delay:
                os.kill(proc.pid, signal.SIGKILL)
                killed = True
                break
            time.sleep(0.002)
        proc.communicate(timeout=120)
        assert proc.returncode == (-signal.SIGKILL if killed else 0), proc.stderr
        left, temps = _outputs(base), _files(base)[1]   # only whole files under final names
        if killed:
            break
    assert killed, "every run ended before its kill"
    done = subprocess.run([sys.executable, "-m", "prunelab", *argv], capture_output=True, text=True, env=_env(),
                          timeout=300)
    assert done.returncode == 0, done.stderr
    return left, temps


def _reference(argv: list[str]) -> float:
    torch.set_num_threads(1)
    start = time.perf_counter()
    assert main(argv) == 0
    return time.perf_counter() - start


def iterate_argv(base: Path) -> list[str]:
    return ["iterate", "--pruning-schedule", "os", "--model", "mlp", "--model-arg", "hidden=[32]",
            "--dataset", "digits", "--rounds", "3", "--epochs", "1", "--out", str(base / "rounds")]


def ltp_argv(dense: Path, base: Path) -> list[str]:
    base.mkdir(exist_ok=True)
    return ["ltp", str(dense), "--epochs", "3", "--penalty-weight", "2", "--finetune-epochs", "1",
            "--trail-dir", str(base / "trail"), "-o", str(base / "ltp.safetensors")]


def grda_argv(base: Path) -> list[str]:
    base.mkdir(exist_ok=True)
    return ["grda", "train", "--model", "mlp", "--dataset", "digits", "--epochs", "2", "--c", "0.005",
            "--out", str(base / "grda.safetensors")]


@pytest.fixture(scope="module")
def dense(tmp_path_factory):
    path = tmp_path_factory.mktemp("dense") / "dense.safetensors"
    torch.set_num_threads(1)
    assert main(["train", "--model", "mlp", "--model-arg", "hidden=[32]", "--dataset", "digits", "--epochs", "3",
                 "--quiet", "--out", str(path)]) == 0
    return path


# Seeds whose point is in the middle of a write (of round_003 or rounds.json, of a trail
# checkpoint, of the gRDA checkpoint); other seeds kill between writes.
@pytest.mark.parametrize("seed", [5])
def test_killed_iterate_reruns_to_the_same_rounds(tmp_path, seed, capsys):
    seconds = _reference(iterate_argv(tmp_path / "ref"))
    capsys.readouterr()
    want = _outputs(tmp_path / "ref")
    assert sorted(want) == [f"rounds/round_00{t}.safetensors" for t in range(4)] + ["rounds/rounds.json"]
    left, temps = _kill_and_rerun(iterate_argv(tmp_path / "run"), tmp_path / "run", seed, len(want), seconds)
    assert temps == 1 and len(left) >= 3
    _assert_same(_outputs(tmp_path / "run"), want)


@pytest.mark.parametrize("seed", [4])
def test_killed_ltp_reruns_to_the_same_network_and_trail(tmp_path, dense, seed, capsys):
    seconds = _reference(ltp_argv(dense, tmp_path / "ref"))
    capsys.readouterr()
    want = _outputs(tmp_path / "ref")
    assert sorted(want) == ["ltp.safetensors"] + [f"trail/ltp_epoch00{e}.safetensors" for e in range(4)]
    left, temps = _kill_and_rerun(ltp_argv(dense, tmp_path / "run"), tmp_path / "run", seed, len(want), seconds)
    assert temps == 1 and len(left) >= 1
    _assert_same(_outputs(tmp_path / "run"), want)


@pytest.mark.parametrize("seed", [2])
def test_killed_grda_train_reruns_to_the_same_checkpoint(tmp_path, seed, capsys):
    seconds = _reference(grda_argv(tmp_path / "ref"))
    capsys.readouterr()
    want = _outputs(tmp_path / "ref")
    assert list(want) == ["grda.safetensors"]
    left, temps = _kill_and_rerun(grda_argv(tmp_path / "run"), tmp_path / "run", seed, len(want), seconds)
    assert temps == 1 and not left
    _assert_same(_outputs(tmp_path / "run"), want)
