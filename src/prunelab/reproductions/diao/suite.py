"""The PQ Index reproduction suite ``pqi`` (Diao et al., "Pruning Deep Neural Networks from a Sparsity
Perspective", ICLR 2023, arXiv:2302.05601).

``prunelab bench --suite pqi`` runs, on Fashion-MNIST with the paper's per-round recipe (SGD lr 0.1,
momentum 0.9, Nesterov, weight decay 5e-4, batch 250, cosine restarted every round, gradient-norm
clip 1.0; the authors' code release), rewinding to initialisation every round:

* (A) models ``linear`` and ``mlp`` (784-128-256-10), global scope: OS-0.2, LT-0.2,
  SAP(p=0.5, q=1, η_r=0, γ=1) and SAP(1, 2, 0, 1), β = 0.9;
* (B) the scope study on ``mlp``: SAP(0.5, 1) at neuron and layer scope (global is in (A)).

Budgets are scaled down from the paper's T = 30 rounds × E = 200 epochs to T = :data:`ROUNDS`,
E = :data:`EPOCHS` so the suite fits about half an hour of one CPU core (measured: 10 runs in 1614 s
wall with ``--threads 1`` on a 2-core machine shared with other jobs; docs/results/pqi/README.md). The harness's dense model
(trained with the same recipe for E epochs, epoch chosen on validation) is round 0 of every run.
Every run has target 0: the harness's iterative methods then run all their rounds
(:mod:`prunelab.methods.iterative` caps at the target only when it is > 0).

``python -m prunelab.reproductions.diao OUTDIR`` (after the bench) writes the suite's own figures
(density per round, accuracy vs density, PQ Index per round, for every schedule on one axis), the
checks of the paper's qualitative claims (``pqi_summary.md`` / ``.html``) and ``pqi_results.json``
(:func:`write_pqi_results`).
"""

from __future__ import annotations

from prunelab.errors import ConfigError
from prunelab.harness.runner import RunSpec
from prunelab.harness.suites import Suite, register_suite
from prunelab.reproductions.diao.claims import check_claims
from prunelab.reproductions.diao.collect import collect, display_name, swings
from prunelab.reproductions.diao.figures import draw_figures
from prunelab.reproductions.diao.report import main, summary_document, write_pqi_results

__all__ = ["ROUNDS", "EPOCHS", "SCHEDULES", "SCOPE_STUDY", "paper_budget", "pqi_specs", "pqi_suite",
           "display_name", "collect", "swings", "check_claims", "draw_figures", "summary_document",
           "write_pqi_results", "main"]


#: pruning rounds T (the paper: 30 for Linear/MLP/CNN).
ROUNDS = 15
#: epochs per round E (the paper: 200).
EPOCHS = 6

#: (A): ``(display name, method, hparams)`` at global scope. Hyperparameters equal to their
#: defaults are spelled out for the reader; the spec hash ignores them.
SCHEDULES = (
    ("OS-0.2", "os", {"rate": 0.2}),
    ("LT-0.2", "lt", {"rate": 0.2}),
    ("SAP(0.5,1)", "sap", {"p": 0.5, "q": 1.0, "eta_r": 0.0, "gamma": 1.0, "beta": 0.9}),
    ("SAP(1,2)", "sap", {"p": 1.0, "q": 2.0, "eta_r": 0.0, "gamma": 1.0, "beta": 0.9}),
)
#: (B): the scopes of SAP(0.5, 1) run on the scope model besides global.
SCOPE_STUDY = ("neuron", "layer")


def paper_budget(epochs: int) -> dict:
    """The paper's per-round recipe as ``TrainConfig`` fields (Diao et al. 2023, their code release).

    Args:
        epochs: epochs per round.

    Returns:
        A dict for ``RunSpec.dense`` / ``RunSpec.retrain``; ``TrainConfig.from_dict`` of it (with a
        seed) equals ``methods.iterative.paper_train_config(epochs, seed)``.
    """
    return {"epochs": int(epochs), "batch_size": 250, "optimizer": "sgd", "lr": 0.1, "momentum": 0.9,
            "nesterov": True, "weight_decay": 5e-4, "schedule": "cosine", "clip_grad_norm": 1.0}


def pqi_specs(dataset: str = "fashion-mnist", rounds: int = ROUNDS, epochs: int = EPOCHS,
              models=("linear", "mlp"), scope_model: str | None = "mlp", seeds=(0,),
              data_kwargs: dict | None = None) -> list[RunSpec]:
    """The suite's run specs (a smaller budget for tests and smoke runs).

    Args:
        dataset: data set name.
        rounds: pruning rounds T of every schedule.
        epochs: epochs of dense training and of every retraining round.
        models: models of part (A); names or ``(name, kwargs)`` pairs.
        scope_model: the model of the scope study (B); None skips it. It must be in ``models``
            (global SAP(0.5, 1) of (A) is the study's third scope).
        seeds: run seeds.
        data_kwargs: options of ``prunelab.data.load`` (e.g. ``{"limit": 500}``).

    Returns:
        Specs ordered seed, model, schedule (then the scope study), all with target 0.

    Raises:
        ConfigError: ``scope_model`` is not one of ``models``.
    """
    names = [m if isinstance(m, str) else m[0] for m in models]
    if scope_model is not None and scope_model not in names:
        raise ConfigError(f"scope_model {scope_model!r} is not among the models {names}; the scope study reuses "
                          "that model's global SAP(0.5,1) run, so add it to models or pass scope_model=None")
    budget = paper_budget(epochs)
    specs = []
    for seed in seeds:
        for model in models:
            name, kwargs = (model, {}) if isinstance(model, str) else (model[0], dict(model[1]))
            variants = [(method, dict(hp)) for _, method, hp in SCHEDULES]
            if name == scope_model:
                variants += [("sap", dict(SCHEDULES[2][2], scope=scope)) for scope in SCOPE_STUDY]
            for method, hp in variants:
                specs.append(RunSpec(dataset=dataset, model=name, method=method, target=0.0, seed=seed,
                                     hparams=dict(hp, rounds=int(rounds)), model_kwargs=kwargs,
                                     data_kwargs=dict(data_kwargs or {}), dense=budget, retrain=budget))
    return specs


@register_suite("pqi")
def pqi_suite(dataset: str | None = None) -> Suite:
    """The reproduction: OS/LT/SAP on Linear and MLP, plus the SAP scope study on MLP."""
    dataset = dataset or "fashion-mnist"
    specs = pqi_specs(dataset)
    return Suite(
        "pqi", tuple(specs),
        description=f"{dataset}, linear and mlp, global OS-0.2, LT-0.2, SAP(0.5,1,0,1), SAP(1,2,0,1), plus SAP(0.5,1) "
                    f"at neuron and layer scope on mlp; T={ROUNDS} rounds x E={EPOCHS} epochs, paper recipe, "
                    "rewind to init, seed 0",
        notes=f"Scaled down from the paper's T=30 rounds x E=200 epochs to T={ROUNDS} x E={EPOCHS} to fit about 30 "
              "minutes of CPU. Target 0: every schedule runs all its rounds, so 'sparsity' is what it reached. "
              "Per-round figures and the checks of the paper's claims: python -m prunelab.reproductions.diao OUTDIR.")
