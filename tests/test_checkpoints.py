import pytest
import torch

import prunelab
from prunelab import models
from prunelab.core.checkpoints import load_checkpoint, save_checkpoint
from prunelab.errors import CheckpointError


def _model(name="lenet5", shape=(1, 28, 28), **kw):
    torch.manual_seed(0)
    return models.create(name, shape, 10, **kw)


def test_round_trip_is_bit_identical_with_masks_and_buffers(tmp_path):
    model = _model("cnn", (1, 8, 8), widths=(4, 8, 8, 8))
    model.train()
    model(torch.randn(8, 1, 8, 8))  # BN running stats become non-trivial
    masks = prunelab.prune(model, "magnitude", sparsity=0.7)
    path = save_checkpoint(tmp_path / "m.safetensors", model, masks, metrics={"top1": 0.5}, extra={"dataset": "digits"})
    ckpt = load_checkpoint(path)
    for (n, a), (_, b) in zip(model.state_dict().items(), ckpt.model.state_dict().items()):
        assert torch.equal(a, b), n
    assert ckpt.masks.equal(masks)
    assert ckpt.meta["metrics"] == {"top1": 0.5}
    assert ckpt.meta["extra"]["dataset"] == "digits"
    assert ckpt.meta["model"]["name"] == "cnn"


def test_loading_into_the_wrong_model_is_a_clear_error(tmp_path):
    path = save_checkpoint(tmp_path / "a.safetensors", _model())
    with pytest.raises(CheckpointError, match="does not fit the model"):
        load_checkpoint(path, _model("lenet-300-100"))
    with pytest.raises(CheckpointError, match="shape"):
        load_checkpoint(path, models.create("lenet5", (1, 28, 28), 7))


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty", "flip_header"])
def test_damaged_files_are_clear_errors(tmp_path, damage):
    path = save_checkpoint(tmp_path / "a.safetensors", _model("lenet-300-100"))
    raw = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(raw[: len(raw) // 2])
    elif damage == "garbage":
        path.write_bytes(b"\x00" * 64)
    elif damage == "empty":
        path.write_bytes(b"")
    else:
        path.write_bytes(raw[:9] + b"\xff" + raw[10:])
    with pytest.raises(CheckpointError, match="a.safetensors"):
        load_checkpoint(path)


def test_missing_file_and_foreign_safetensors(tmp_path):
    with pytest.raises(CheckpointError, match="no such"):
        load_checkpoint(tmp_path / "nope.safetensors")
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(CheckpointError, match="not a prunelab checkpoint"):
        load_checkpoint(tmp_path / "foreign.safetensors")


def test_failed_write_leaves_the_previous_file_intact(tmp_path, monkeypatch):
    path = save_checkpoint(tmp_path / "a.safetensors", _model("linear", (1, 8, 8)))
    before = path.read_bytes()
    import safetensors.torch

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", boom)
    with pytest.raises(OSError):
        save_checkpoint(path, _model("linear", (1, 8, 8)))
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["a.safetensors"]


def test_metadata_is_plain_json_and_round_trips(tmp_path):
    import numpy as np

    metrics = {"top1": np.float32(0.5), "n": np.int64(3), "loss": torch.tensor(0.25), "curve": (1, 2.5)}
    path = save_checkpoint(tmp_path / "m.safetensors", _model("linear", (1, 8, 8)), metrics=metrics,
                           extra={"nested": {"dir": tmp_path}})
    meta = load_checkpoint(path).meta
    assert meta["metrics"] == {"top1": 0.5, "n": 3, "loss": 0.25, "curve": [1, 2.5]}
    assert meta["extra"] == {"nested": {"dir": str(tmp_path)}}
    assert meta["format"] == "prunelab-checkpoint" and meta["version"] == 1


def test_rebuild_uses_the_given_builder_or_the_models_one(tmp_path):
    from prunelab.core import checkpoints

    path = save_checkpoint(tmp_path / "a.safetensors", _model("linear", (1, 8, 8)))
    seen = []

    def build(config):
        seen.append(config)
        return models.from_config(config)

    ckpt = load_checkpoint(path, build=build)
    assert seen == [ckpt.meta["model"]] and ckpt.model.prunelab_config == ckpt.meta["model"]
    with pytest.raises(CheckpointError, match="cannot rebuild its model"):
        load_checkpoint(path, build=lambda config: models.create("nope", (1,), 2))
    # The core imports no model zoo: prunelab.models installs its from_config as the default builder.
    assert checkpoints._model_builder is models.from_config
    checkpoints.set_model_builder(None)
    try:
        with pytest.raises(CheckpointError, match="no model builder"):
            load_checkpoint(path)
    finally:
        checkpoints.set_model_builder(models.from_config)
