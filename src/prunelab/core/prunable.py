"""What is prunable, and what every parameter is called.

*Prunable* is a rule (:class:`PrunableRule`) the user can change. Built in: the weight of every
``nn.Linear``, ``nn.Conv1d/2d/3d`` and HuggingFace ``Conv1D`` (recognised by its class name and
its ``nf`` attribute, so transformers need not be imported), and ``nn.MultiheadAttention``'s
``in_proj_weight`` (or its separate ``q_proj_weight``/``k_proj_weight``/``v_proj_weight``; its
``out_proj`` is an ``nn.Linear``). Embeddings (``nn.Embedding``, ``nn.EmbeddingBag``) are opt-in.
Users add module types, name patterns or a predicate, and exclude names, patterns, the first or the
last layer. Biases and normalisation parameters are never prunable by default.

*Canonical names.* A parameter has one name: the one ``model.named_parameters()`` gives it on the
*unwrapped* model (``torch.compile``'s ``_orig_mod``, ``DistributedDataParallel``'s and
``DataParallel``'s ``module`` removed, see :func:`unwrap`). A tied parameter (GPT-2's output layer
shares the token embedding) is one entry, under the first name PyTorch lists; its other names are
*aliases* that resolve to it. A weight tied to an embedding counts as an embedding: it is prunable
only when embeddings are opted in. Names written with wrapper prefixes (``_orig_mod.fc1.weight``,
``module.fc1.weight``) resolve to the plain name, so masks and checkpoints move between a model and
its wrappers in both directions.

*Coverage.* A *weight matrix* is any parameter with two or more dimensions. :func:`coverage` says
what fraction of all weight-matrix entries a set of names covers and which matrices it leaves out;
:func:`warn_left_out` says so once per model and set, as a :class:`CoverageWarning`.
"""

from __future__ import annotations

import fnmatch
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn

from prunelab.errors import MaskError

#: Built-in prunable module types (HuggingFace ``Conv1D`` and ``nn.MultiheadAttention`` are
#: handled by :func:`_module_weights` beside these).
PRUNABLE_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
EMBEDDING_TYPES = (nn.Embedding, nn.EmbeddingBag)
#: Attribute names of wrappers whose wrapped model is the real one, outermost first.
WRAPPER_ATTRIBUTES = ("_orig_mod", "module", "_fsdp_wrapped_module", "_checkpoint_wrapped_module")
_WRAPPER_PREFIXES = tuple(f"{a}." for a in WRAPPER_ATTRIBUTES)
#: Wrapper class name -> the attribute holding the wrapped model.
_WRAPPER_TYPES = {
    "OptimizedModule": "_orig_mod", "DistributedDataParallel": "module", "DataParallel": "module",
    "FullyShardedDataParallel": "_fsdp_wrapped_module", "CheckpointWrapper": "_checkpoint_wrapped_module",
}
_MHA_WEIGHTS = ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight")


class CoverageWarning(UserWarning):
    """Weight matrices are left dense because the prunable rule does not cover them."""


@dataclass(frozen=True)
class PrunableRule:
    """Which weight matrices are prunable.

    Attributes:
        embeddings: also prune ``nn.Embedding``/``nn.EmbeddingBag`` weights, and weights tied to
            them (a language model's tied output layer).
        types: extra module types whose ``weight`` (a matrix) is prunable.
        patterns: ``fnmatch`` patterns of canonical parameter names to add (any weight matrix).
        predicate: ``predicate(name, module, parameter) -> bool``; a weight matrix for which it
            returns True is added (``module`` owns the parameter).
        exclude: parameter names (``"fc1.weight"``), module names (``"fc1"``) or ``fnmatch``
            patterns (``"*.attn.*"``) to leave dense. A plain name that matches nothing is an error.
        exclude_first: leave the first prunable layer (in module order) dense.
        exclude_last: leave the last prunable layer (usually the classifier) dense.
    """

    embeddings: bool = False
    types: tuple[type, ...] = ()
    patterns: tuple[str, ...] = ()
    predicate: Callable[[str, nn.Module, torch.Tensor], bool] | None = None
    exclude: tuple[str, ...] = ()
    exclude_first: bool = False
    exclude_last: bool = False

    def __post_init__(self):
        for field_name in ("types", "patterns", "exclude"):
            value = getattr(self, field_name)
            if isinstance(value, (str, type)):
                value = (value,)
            object.__setattr__(self, field_name, tuple(value))

    @classmethod
    def of(cls, rule: "PrunableRule | None" = None, **options) -> "PrunableRule":
        """``rule`` with ``options`` (fields of this class) replaced; a fresh rule without one.

        Raises:
            MaskError: an option that is not a field of :class:`PrunableRule`.
        """
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(options) - known)
        if unknown:
            raise MaskError(f"unknown prunable-rule option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        if rule is None:
            return cls(**options)
        if not options:
            return rule
        values = {name: getattr(rule, name) for name in known}
        values.update(options)
        return cls(**values)


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside ``torch.compile``, ``DistributedDataParallel``, ``DataParallel`` and FSDP
    wrappers (any number, any order); ``model`` itself when it is not wrapped.

    Wrappers are known by class name (so torch's optional parts need not be imported), and a
    user's own module with a child called ``module`` is never mistaken for one."""
    for _ in range(16):
        attribute = _WRAPPER_TYPES.get(type(model).__name__)
        inner = model._modules.get(attribute) if attribute else None
        if not isinstance(inner, nn.Module):
            return model
        model = inner
    return model


def strip_wrapper_prefixes(name: str) -> str:
    """``name`` without leading wrapper prefixes (``_orig_mod.``, ``module.``, ...)."""
    while name.startswith(_WRAPPER_PREFIXES):
        name = name.split(".", 1)[1]
    return name


def model_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """``canonical name -> parameter`` of the unwrapped model, one entry per tensor (tied
    parameters once, under the first name PyTorch lists)."""
    return dict(unwrap(model).named_parameters())


def parameter_aliases(model: nn.Module) -> dict[str, str]:
    """``every name -> canonical name`` for the unwrapped model's parameters, tied names included
    (``"lm_head.weight" -> "transformer.wte.weight"`` in a tied GPT-2)."""
    canonical: dict[int, str] = {}
    aliases: dict[str, str] = {}
    for name, param in unwrap(model).named_parameters(remove_duplicate=False):
        aliases[name] = canonical.setdefault(id(param), name)
    return aliases


def canonical_name(name: str, aliases: dict[str, str]) -> str | None:
    """The canonical name ``name`` refers to (exact, tied alias, or with wrapper prefixes
    stripped), or None when it names no parameter.

    Args:
        name: a parameter name as a user, a checkpoint or a wrapped model writes it.
        aliases: :func:`parameter_aliases` of the model.
    """
    if name in aliases:
        return aliases[name]
    stripped = strip_wrapper_prefixes(name)
    return aliases.get(stripped)


def resolve_parameters(model: nn.Module, names: Iterable[str]) -> dict[str, nn.Parameter]:
    """``given name -> parameter`` for every name (canonical, alias, or wrapper-prefixed).

    Raises:
        MaskError: a name resolves to no parameter of ``model``.
    """
    aliases = parameter_aliases(model)
    params = model_parameters(model)
    out = {}
    for name in names:
        key = canonical_name(name, aliases)
        if key is None:
            raise MaskError(
                f"{name!r} names no parameter of the model ({type(unwrap(model)).__name__}); "
                f"were the masks made for another model?"
            )
        out[name] = params[key]
    return out


def is_hf_conv1d(module: nn.Module) -> bool:
    """True for HuggingFace's ``Conv1D`` (GPT-2 and relatives): a Linear layer whose weight is
    stored transposed, ``(d_in, d_out)``; recognised without importing transformers."""
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf") and isinstance(
        getattr(module, "weight", None), torch.Tensor)


def input_first_weights(model: nn.Module, names: Iterable[str]) -> set[str]:
    """The names among ``names`` of weights stored ``(d_in, d_out)``: HuggingFace ``Conv1D``'s.

    Whatever is computed per output unit (a neuron's PQ Index, a neuron's pruning count) takes
    the *columns* of such a weight, where an ``nn.Linear`` weight gives its rows.

    Args:
        model: the network (wrappers are looked through).
        names: parameter names (canonical, tied aliases or wrapper-prefixed); names of no
            parameter are ignored.

    Returns:
        The subset of ``names`` whose parameter is the ``weight`` of a HuggingFace ``Conv1D``.

    Example:
        >>> input_first_weights(gpt2, ["transformer.h.0.attn.c_attn.weight", "lm_head.weight"])
        {'transformer.h.0.attn.c_attn.weight'}
    """
    inner = unwrap(model)
    aliases = parameter_aliases(inner)
    found = set()
    for name in names:
        module_name, _, attribute = (canonical_name(name, aliases) or "").rpartition(".")
        if attribute == "weight" and is_hf_conv1d(inner.get_submodule(module_name)):
            found.add(name)
    return found


def _module_weights(module: nn.Module, rule: PrunableRule) -> list[str]:
    """Attribute names of ``module``'s own prunable weights under ``rule``."""
    if isinstance(module, nn.MultiheadAttention):
        return [a for a in _MHA_WEIGHTS if isinstance(getattr(module, a, None), nn.Parameter)]
    builtin = isinstance(module, PRUNABLE_TYPES) or is_hf_conv1d(module)
    extra = bool(rule.types) and isinstance(module, rule.types)
    embedding = rule.embeddings and isinstance(module, EMBEDDING_TYPES)
    if builtin or extra or embedding:
        weight = module._parameters.get("weight")
        if isinstance(weight, nn.Parameter) and weight.dim() > 1:
            return ["weight"]
    return []


def _embedding_ids(model: nn.Module) -> set[int]:
    return {id(m.weight) for m in model.modules() if isinstance(m, EMBEDDING_TYPES)
            and isinstance(getattr(m, "weight", None), torch.Tensor)}


def _matches(name: str, pattern: str) -> bool:
    return name == pattern or fnmatch.fnmatchcase(name, pattern)


def prunable_parameters(model: nn.Module, rule: PrunableRule | None = None, **options) -> dict[str, nn.Parameter]:
    """The prunable weight matrices of ``model`` under ``rule``, by canonical name, in module order.

    Args:
        model: the network (wrappers are looked through, see :func:`unwrap`).
        rule: a :class:`PrunableRule`; default the built-in rule.
        **options: fields of :class:`PrunableRule` overriding ``rule``'s (``exclude=("fc3",)``,
            ``exclude_last=True``, ``embeddings=True``, ...).

    Returns:
        An ordered dict ``canonical name -> parameter``; a tied parameter appears once.

    Raises:
        MaskError: an ``exclude`` entry (not a pattern) that names no prunable layer.

    Example:
        >>> prunable_parameters(gpt2, embeddings=True)            # the tied lm_head/wte once
        >>> prunable_parameters(net, exclude=("*.downsample.*",))  # leave shortcuts dense
    """
    rule = PrunableRule.of(rule, **options)
    inner = unwrap(model)
    aliases = parameter_aliases(inner)
    params = model_parameters(inner)
    embedding_ids = set() if rule.embeddings else _embedding_ids(inner)
    found: dict[str, nn.Parameter] = {}
    owners: dict[str, nn.Module] = {}

    def add(name: str, module: nn.Module) -> None:
        key = aliases.get(name, name)
        param = params.get(key)
        if param is None or param.dim() < 2 or id(param) in embedding_ids:
            return
        found.setdefault(key, param)
        owners.setdefault(key, module)

    for module_name, module in inner.named_modules():
        prefix = f"{module_name}." if module_name else ""
        for attribute in _module_weights(module, rule):
            add(prefix + attribute, module)
        if rule.patterns or rule.predicate is not None:
            for attribute, param in module._parameters.items():
                if param is None or param.dim() < 2:
                    continue
                name = aliases.get(prefix + attribute, prefix + attribute)
                if any(_matches(name, p) for p in rule.patterns) or (
                        rule.predicate is not None and rule.predicate(name, module, param)):
                    if id(param) in embedding_ids and not rule.embeddings:
                        # An explicit request for an embedding's matrix is the opt-in.
                        found.setdefault(name, param)
                    else:
                        add(prefix + attribute, module)
    names = list(found)
    drop: set[str] = set()
    unknown = []
    for entry in rule.exclude:
        hits = {n for n in names if _matches(n, entry) or n.startswith(f"{entry}.") or
                _matches(n.rsplit(".", 1)[0] if "." in n else "", entry)}
        key = canonical_name(entry, aliases)
        if key in found:
            hits.add(key)
        if not hits and not any(ch in entry for ch in "*?["):
            unknown.append(entry)
        drop |= hits
    if unknown:
        raise MaskError(
            f"cannot exclude {', '.join(unknown)}: not a prunable layer; prunable: {', '.join(names)}"
        )
    if rule.exclude_first and names:
        drop.add(names[0])
    if rule.exclude_last and names:
        drop.add(names[-1])
    return {n: p for n, p in found.items() if n not in drop}


@dataclass(frozen=True)
class Coverage:
    """What fraction of a model's weight-matrix entries a set of parameters covers.

    Attributes:
        covered: entries of the covered weight matrices.
        total: entries of all weight matrices (parameters with two or more dimensions, each
            tied tensor once).
        left_out: ``(canonical name, entries)`` of every weight matrix not covered, in model order.
    """

    covered: int
    total: int
    left_out: tuple[tuple[str, int], ...]

    @property
    def fraction(self) -> float:
        """``covered / total`` (1.0 for a model without weight matrices)."""
        return self.covered / self.total if self.total else 1.0

    def line(self) -> str:
        """One line for reports: the fraction and every matrix left out."""
        text = f"{self.covered} of {self.total} weight-matrix entries covered ({self.fraction:.2%})"
        if self.left_out:
            shown = ", ".join(f"{n} ({k})" for n, k in self.left_out)
            text += f"; left dense: {shown}"
        return text

    def to_dict(self) -> dict:
        """JSON-able form."""
        return {"covered": self.covered, "total": self.total, "fraction": self.fraction,
                "left_out": [list(item) for item in self.left_out]}


def coverage(model: nn.Module, names: Iterable[str]) -> Coverage:
    """What ``names`` (mask names: canonical, aliases or wrapper-prefixed) cover of ``model``.

    Raises:
        MaskError: a name resolves to no parameter.
    """
    aliases = parameter_aliases(model)
    covered_names = set()
    for name in names:
        key = canonical_name(name, aliases)
        if key is None:
            raise MaskError(f"{name!r} names no parameter of the model")
        covered_names.add(key)
    covered = total = 0
    left = []
    for name, param in model_parameters(model).items():
        if param.dim() < 2:
            continue
        total += param.numel()
        if name in covered_names:
            covered += param.numel()
        else:
            left.append((name, param.numel()))
    return Coverage(covered, total, tuple(left))


_WARNED: set[tuple[str, tuple[str, ...]]] = set()


def warn_left_out(model: nn.Module, names: Iterable[str], stacklevel: int = 3) -> Coverage:
    """Warn (:class:`CoverageWarning`, once per model class and set) about weight matrices that
    ``names`` leave dense; returns the :class:`Coverage`."""
    cov = coverage(model, names)
    if cov.left_out:
        key = (type(unwrap(model)).__qualname__, tuple(n for n, _ in cov.left_out))
        if key not in _WARNED:
            _WARNED.add(key)
            warnings.warn(f"prunelab: masks: {cov.line()} (not prunable under the current rule; "
                          f"see prunelab.PrunableRule)", CoverageWarning, stacklevel=stacklevel)
    return cov
