"""Pruning callbacks for other frameworks' trainers: the shared keeper, HuggingFace, Lightning."""

import subprocess
import sys

import pytest
import torch
from torch import nn

import prunelab
from prunelab.core.masks import Masks
from prunelab.errors import ConfigError
from prunelab.integrations import MaskKeeper
from prunelab.methods.gmp import GradualMagnitudePruning

SCHEDULE = {"final_sparsity": 0.8, "initial_sparsity": 0.0, "begin_step": 0, "end_step": 15, "frequency": 5}


def _assert_exact(model, masks):
    """Every pruned entry is exactly zero (the masks cover what they say)."""
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        assert torch.count_nonzero(params[name].detach()[~mask.to(params[name].device)]) == 0, name


def _expected_gmp_events():
    schedule = GradualMagnitudePruning(**SCHEDULE)
    return [(step, schedule.target(step)) for step in (0, 5, 10, 15)]


# --------------------------------------------------------------------------- keeper and schedule

def test_importing_prunelab_imports_no_framework():
    code = ("import sys, prunelab, prunelab.integrations; "
            "print(sorted(m for m in ('transformers', 'lightning', 'pytorch_lightning') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_keeper_takes_gmp_as_an_instance_or_its_arguments_and_checks_its_input():
    gmp = GradualMagnitudePruning(0.5, end_step=7, frequency=3)
    assert MaskKeeper(gmp=gmp).gmp is gmp
    built = MaskKeeper(gmp=SCHEDULE).gmp
    assert (built.final, built.begin_step, built.end_step, built.frequency) == (0.8, 0, 15, 5)
    for bad, needle in [({"final_sparsity": 0.5, "initial_sparsity": 0.6}, "exceeds"),
                        ({"final_sparsity": 0.5, "scope": "row"}, "unknown scope"),
                        ({"final_sparsity": 0.5, "frequncy": 3}, "no argument frequncy"),
                        ({"end_step": 10}, "needs final_sparsity")]:
        with pytest.raises(ConfigError, match=needle):
            MaskKeeper(gmp=bad)
    with pytest.raises(ConfigError, match="must be a GradualMagnitudePruning"):
        MaskKeeper(gmp=0.5)
    with pytest.raises(ConfigError, match="masks to keep exact, a gmp schedule"):
        MaskKeeper()
    with pytest.raises(ConfigError, match="not started"):
        MaskKeeper(gmp=SCHEDULE).after_step(nn.Linear(2, 2))
    model = _mlp()
    gmp.step(model)
    with pytest.raises(ConfigError, match="already holds masks"):
        MaskKeeper(Masks.ones(model), gmp=gmp)


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(12, 32), nn.ReLU(), nn.Linear(32, 4))


def _own_loop(model, keeper, steps, optimizer):
    generator = torch.Generator().manual_seed(1)
    keeper.begin(model, optimizer, 0)
    for step in range(1, steps + 1):
        x = torch.randn(16, 12, generator=generator)
        y = torch.randint(0, 4, (16,), generator=generator)
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        keeper.before_step(model)
        optimizer.step()
        keeper.after_step(model, optimizer, step)
    keeper.end(model, optimizer)


def test_keeper_keeps_masks_exact_in_a_plain_loop_and_zeroes_adam_state():
    model = _mlp()
    masks = prunelab.prune(model, "magnitude", 0.6)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    keeper = MaskKeeper(masks)
    _own_loop(model, keeper, 12, optimizer)
    assert keeper.masks.pruned() == round(0.6 * masks.total()) and keeper.events == []
    _assert_exact(model, keeper.masks)
    params = dict(model.named_parameters())
    for name, mask in keeper.masks.items():
        state = optimizer.state[params[name]]
        assert torch.count_nonzero(state["exp_avg"][~mask]) == 0 and torch.count_nonzero(state["exp_avg_sq"][~mask]) == 0
        assert not torch.equal(params[name][mask], before[name][mask])   # the kept weights did train


def test_keeper_reaches_the_schedule_exactly_and_finishes_a_cut_short_run():
    model = _mlp()
    keeper = MaskKeeper(gmp=SCHEDULE)
    _own_loop(model, keeper, 20, torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9))
    assert [(e["step"], e["target"]) for e in keeper.events] == _expected_gmp_events()
    assert keeper.masks.pruned() == round(0.8 * keeper.masks.total())
    _assert_exact(model, keeper.masks)
    short = MaskKeeper(gmp=SCHEDULE)
    with pytest.warns(UserWarning, match="before the schedule's end step 15"):
        _own_loop(_mlp(), short, 7, torch.optim.SGD(_mlp().parameters(), lr=0.05))
    assert [e["step"] for e in short.events] == [0, 5, 15]
    assert short.masks.pruned() == round(0.8 * short.masks.total())


def test_keeper_follows_the_frameworks_step_count_and_every_optimizer():
    model = _mlp()
    first, second = (torch.optim.SGD(layer.parameters(), lr=0.1, momentum=0.9) for layer in (model[0], model[2]))
    keeper = MaskKeeper(gmp=dict(SCHEDULE, scope="layer"))   # global would prune all of the small last layer
    keeper.begin(model, [first, second], step=10)         # a resumed run: step 10 is an event
    assert [(e["step"], e["target"]) for e in keeper.events] == _expected_gmp_events()[2:3]
    x, y = torch.randn(16, 12, generator=torch.Generator().manual_seed(2)), torch.arange(16) % 4
    for step in (11, 11, 12, 13, 14, 15, 15):              # repeated: Lightning's accumulated batches
        nn.functional.cross_entropy(model(x), y).backward()
        keeper.before_step(model)
        first.step(), second.step(), first.zero_grad(), second.zero_grad()
        keeper.after_step(model, [first, second], step)
    assert [e["step"] for e in keeper.events] == [10, 15] and keeper.gmp.steps_done == 15
    assert [m.numel() - int(m.sum()) for m in keeper.masks.values()] == [round(0.8 * 384), round(0.8 * 128)]
    _assert_exact(model, keeper.masks)
    params = dict(model.named_parameters())
    for name, optimizer in (("0.weight", first), ("2.weight", second)):
        buffer = optimizer.state[params[name]]["momentum_buffer"]
        assert torch.count_nonzero(buffer[~keeper.masks[name]]) == 0 and torch.count_nonzero(buffer) > 0
    keeper.after_step(model, [first, second])             # no step given: one more than the last
    assert keeper.gmp.steps_done == 16


def test_keeper_accepts_a_compiled_wrapper_and_prefixed_mask_names():
    model = _mlp()
    masks = prunelab.prune(model, "magnitude", 0.5)
    wrapped = torch.compile(model, backend="eager")
    prefixed = Masks({f"_orig_mod.{n}": m for n, m in masks.items()})
    keeper = MaskKeeper(prefixed)
    _own_loop(wrapped, keeper, 3, torch.optim.Adam(wrapped.parameters(), lr=1e-2))
    assert set(keeper.masks) == set(masks) and keeper.masks.equal(masks)
    _assert_exact(model, masks)


# --------------------------------------------------------------------------- HuggingFace

class _Tokens(torch.utils.data.Dataset):
    def __init__(self, n=64, length=16, vocab=500):
        self.ids = torch.randint(0, vocab, (n, length), generator=torch.Generator().manual_seed(0))

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def _hf_train(tmp_path, callback):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    from prunelab.integrations.hf import PruningCallback  # noqa: F401  (importable once transformers is)

    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=500, n_positions=64)
    model = transformers.GPT2LMHeadModel(config)
    masks = callback(model)
    args = transformers.TrainingArguments(output_dir=str(tmp_path), max_steps=20, report_to=[], use_cpu=True,
                                          per_device_train_batch_size=4, save_strategy="no", logging_strategy="no",
                                          disable_tqdm=True, learning_rate=1e-3, weight_decay=0.1)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=_Tokens(), callbacks=[masks])
    trainer.train()
    return model, masks, trainer


def test_hf_trainer_keeps_masks_exact(tmp_path):
    pytest.importorskip("transformers")
    from prunelab.integrations.hf import PruningCallback

    start = {}

    def make(model):
        masks = prunelab.prune(model, "magnitude", 0.5)
        start.update(masks=masks.clone(), weights={n: p.detach().clone() for n, p in model.named_parameters()})
        return PruningCallback(masks)

    model, callback, trainer = _hf_train(tmp_path, make)
    assert trainer.state.global_step == 20
    assert callback.masks.equal(start["masks"]) and callback.masks.pruned() == round(0.5 * callback.masks.total())
    assert len(callback.masks) == 8   # every Conv1D weight of the two blocks
    _assert_exact(model, callback.masks)
    params = dict(model.named_parameters())
    optimizer = trainer.optimizer.optimizer if hasattr(trainer.optimizer, "optimizer") else trainer.optimizer
    for name, mask in callback.masks.items():
        assert torch.count_nonzero(optimizer.state[params[name]]["exp_avg"][~mask]) == 0
        assert not torch.equal(params[name][mask], start["weights"][name][mask])


def test_hf_trainer_reaches_the_gmp_target_exactly(tmp_path):
    pytest.importorskip("transformers")
    from prunelab.integrations.hf import PruningCallback

    model, callback, _ = _hf_train(tmp_path, lambda model: PruningCallback(gmp=SCHEDULE))
    assert [(e["step"], e["target"]) for e in callback.events] == _expected_gmp_events()
    assert callback.masks.pruned() == round(0.8 * callback.masks.total())
    _assert_exact(model, callback.masks)


# --------------------------------------------------------------------------- Lightning

def _lightning():
    try:
        import lightning.pytorch as pl
    except ImportError:
        pl = pytest.importorskip("pytorch_lightning")
    return pl


def _lightning_fit(callback):
    pl = _lightning()

    class Module(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = _mlp()

        def training_step(self, batch, batch_idx):
            x, y = batch
            return nn.functional.cross_entropy(self.net(x), y)

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=1e-2)

    generator = torch.Generator().manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(160, 12, generator=generator),
                                          torch.randint(0, 4, (160,), generator=generator))
    module = Module()
    trainer = pl.Trainer(max_steps=20, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[callback(module)])
    trainer.fit(module, torch.utils.data.DataLoader(data, batch_size=16))
    return module, trainer


def test_lightning_keeps_masks_exact():
    _lightning()
    from prunelab.integrations.lightning import PruningCallback

    made = {}

    def make(module):
        masks = prunelab.prune(module, "magnitude", 0.7)
        made.update(callback=PruningCallback(masks), masks=masks.clone())
        return made["callback"]

    module, trainer = _lightning_fit(make)
    callback = made["callback"]
    assert trainer.global_step == 20
    assert callback.masks.equal(made["masks"]) and callback.masks.pruned() == round(0.7 * callback.masks.total())
    _assert_exact(module, callback.masks)
    params = dict(module.named_parameters())
    for name, mask in callback.masks.items():
        assert torch.count_nonzero(trainer.optimizers[0].state[params[name]]["exp_avg"][~mask]) == 0


def test_lightning_reaches_the_gmp_target_exactly():
    _lightning()
    from prunelab.integrations.lightning import PruningCallback

    made = {}
    module, _ = _lightning_fit(lambda module: made.setdefault("callback", PruningCallback(gmp=SCHEDULE)))
    callback = made["callback"]
    assert [(e["step"], e["target"]) for e in callback.events] == _expected_gmp_events()
    assert callback.masks.pruned() == round(0.8 * callback.masks.total())
    _assert_exact(module, callback.masks)
