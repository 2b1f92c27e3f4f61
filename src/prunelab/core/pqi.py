"""PQ Index and Gini index: how sparse a set of weights is (Diao et al., ICLR 2023, Definition 1).

For 0 < p < q and non-zero w in R^d (d = number of weights that remain, i.e. are not masked):

    I_{p,q}(w) = 1 − d^{1/q − 1/p} · ‖w‖_p / ‖w‖_q
               = 1 − ((1/d) Σ|w_i|^p)^{1/p} / ((1/d) Σ|w_i|^q)^{1/q}

0 ≤ I ≤ 1 − d^{1/q−1/p} (Theorem 1): 0 for a constant vector, the maximum for a 1-sparse vector;
larger means sparser. The paper's code (``modules/sparsity_index.py``) computes it for the
unmasked weights at three scopes: ``neuron`` (one value per output unit, i.e. per row of the
weight reshaped to ``(out, -1)``), ``layer`` (one per weight tensor) and ``global`` (all prunable
weights together), over the grid p ∈ {0.1, …, 1.0} × q ∈ {1.0, …, 2.0}. A neuron of a grouped
conv (our choice) is one output channel: in a depthwise conv its own k×k filter (9 weights for 3×3).
A HuggingFace ``Conv1D`` weight is stored ``(in, out)``: its neurons are its columns (given a model).

Edge cases (documented choices):
    * d = 0 (everything masked): I = 0, as in the paper's code.
    * all remaining weights are zero: I = 0 (the paper's code returns NaN there: 0/0).
    * values outside Theorem 1's range from rounding are clipped into it (the code clips
      (−1e-5, 0) to 0; the power-mean inequality makes every negative value a rounding
      artefact, so we clip all, and likewise values above 1 − d^{1/q−1/p}).
    * p ≥ q or p ≤ 0: :class:`~prunelab.errors.ConfigError`; in the grid, the cell p = q = 1
      (outside the definition) is NaN.

Numerics: |w|^p and |w|^q are computed in float32 (float64 for float64 weights) over chunks of
262 144 weights copied into a reused buffer, and summed in float64 (float32 partial sums of 256
entries, then float64). Against a float64 computation over 25 M float32 weights the error was
≤ 3e-9 for (p, q) = (0.5, 1), ≤ 3e-10 for (1, 2) and ≤ 6e-8 for p ∈ {0.1, 0.3}: float32 powers
(~1 ulp) bound it, by about 1e-7·(1/p + 1/q) when every entry rounds the same way (a constant
vector). The global index costs about 3× one ``w.abs().sum()`` pass (benchmarks/bench_pqi.py);
float64 elementwise work would cost 5-7×. Zeros (masked or pruned entries) are raised to 1
before the fractional powers, which x86 CPUs compute 8-140× slower for 0 and subnormals. If some
|w|^e overflows, or the largest ones underflow, the sums are redone with the weights divided by
their largest magnitude (the index is scale invariant).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from prunelab.core.prunable import input_first_weights
from prunelab.errors import ConfigError, MaskError

__all__ = [
    "PQ_SCOPES", "P_GRID", "Q_GRID", "check_pq", "pq_index", "pq_index_grid", "gini_index",
    "pq_index_model", "pq_index_grid_model", "gini_index_model", "grid_to_lists",
]

PQ_SCOPES = ("global", "layer", "neuron")
#: The paper's grid: ``torch.arange(0.1, 1.1, 0.1)`` and ``torch.arange(1.0, 2.1, 0.1)``, rounded.
P_GRID: tuple[float, ...] = tuple(round(0.1 * i, 1) for i in range(1, 11))
Q_GRID: tuple[float, ...] = tuple(round(1.0 + 0.1 * i, 1) for i in range(0, 11))

# Power sums run over chunks of this many weights copied into a reused buffer: the elementwise
# powers stay in cache and no |w|-sized temporary is allocated.
_CHUNK = 1 << 18
# A power sum below this (but not 0), or not finite, means |w|^e left the working dtype's range:
# the sums are then redone with the weights divided by their largest magnitude.
_TINY = {torch.float32: 1e-20, torch.float64: 1e-250}


def check_pq(p: float, q: float) -> tuple[float, float]:
    """Validate ``0 < p < q`` (both finite) and return them as floats.

    Raises:
        ConfigError: when the pair is outside the definition of the PQ Index.
    """
    try:
        p, q = float(p), float(q)
    except (TypeError, ValueError):
        raise ConfigError(f"p and q must be numbers, got p={p!r}, q={q!r}") from None
    if not (math.isfinite(p) and math.isfinite(q)) or p <= 0 or p >= q:
        raise ConfigError(f"the PQ Index needs 0 < p < q (finite), got p={p}, q={q}; e.g. p=0.5, q=1.0")
    return p, q


def _check_scope(scope: str) -> str:
    if scope not in PQ_SCOPES:
        raise ConfigError(f"unknown PQ Index scope {scope!r}; choose one of {', '.join(PQ_SCOPES)}")
    return scope


def _as_float(w) -> torch.Tensor:
    w = torch.as_tensor(w).detach()
    return w if w.is_floating_point() else w.to(torch.float64)


def _work_dtype(w: torch.Tensor) -> torch.dtype:
    return torch.float64 if w.dtype == torch.float64 else torch.float32


def _as_mask(mask, w: torch.Tensor) -> torch.Tensor | None:
    if mask is None:
        return None
    mask = torch.as_tensor(mask).to(device=w.device, dtype=torch.bool)
    if mask.shape != w.shape:
        raise MaskError(f"mask of shape {tuple(mask.shape)} does not fit weights of shape {tuple(w.shape)}")
    return mask


def _many_zeros(w: torch.Tensor) -> bool:
    """More than 1% zeros in a strided sample of ~4096 entries (e.g. pruned weights, no mask)."""
    flat = w.reshape(-1)
    sample = flat[:: max(1, flat.numel() // 4096)]
    return bool((sample == 0).sum() * 100 > sample.numel())


def _sum_rows_f64(x: torch.Tensor, block: int = 256) -> torch.Tensor:
    """Row sums of a 2-D tensor as float64: float32 partial sums of ``block`` entries (accurate
    to ~1e-8, and 4x cheaper than converting every entry), then float64 across blocks."""
    if x.dtype == torch.float64:
        return x.sum(dim=1)
    rows, cols = x.shape
    k = (cols // block) * block
    total = x[:, :k].view(rows, k // block, block).sum(dim=2).sum(dim=1, dtype=torch.float64)
    if k < cols:
        total += x[:, k:].sum(dim=1, dtype=torch.float64)
    return total


def _power_sums_2d(w: torch.Tensor, mask: torch.Tensor | None, exps: Sequence[float],
                   scale: torch.Tensor | None = None) -> dict[float, torch.Tensor]:
    """Per-row Σ (|w|/scale)^e over the unmasked entries of a 2-D tensor, as float64.

    Elementwise work in float32 (float64 for float64 weights) over chunks of a reused buffer;
    chunk sums are accumulated in float64. ``scale`` is None, a scalar or one value per row.
    """
    rows, cols = w.shape
    dtype = _work_dtype(w)
    sums = {e: torch.zeros(rows, dtype=torch.float64, device=w.device) for e in exps}
    if rows == 0 or cols == 0:
        return sums
    fractional = [e for e in exps if e != 1.0]
    # sqrt/pow of 0 and of subnormals run 8-140x slower than of normal numbers on x86 CPUs; where
    # zeros are expected (masked entries, pruned weights) they are raised to 1 first (1^e = 1
    # exactly) and the 1 is subtracted from each power again (exact too).
    fill_zeros = bool(fractional) and (mask is not None or _many_zeros(w))
    col_step = min(cols, _CHUNK)
    row_step = max(1, _CHUNK // col_step)
    buf = torch.empty(row_step * col_step, dtype=dtype, device=w.device)
    out, zbuf = torch.empty_like(buf), torch.empty_like(buf)
    tiny = torch.finfo(dtype).tiny
    if scale is not None:
        inv = (1.0 / scale.to(torch.float64)).to(device=w.device, dtype=dtype)
        inv = inv.reshape(-1, 1) if inv.dim() else inv
    for r0 in range(0, rows, row_step):
        r1 = min(rows, r0 + row_step)
        for c0 in range(0, cols, col_step):
            c1 = min(cols, c0 + col_step)
            n = (r1 - r0) * (c1 - c0)
            a = buf[:n].view(r1 - r0, c1 - c0)
            src = w[r0:r1, c0:c1]
            if src.dtype == dtype:
                torch.abs(src, out=a)
            else:
                a.copy_(src).abs_()
            if mask is not None:
                a.mul_(mask[r0:r1, c0:c1].view(torch.uint8))  # 4x faster than a bool operand
            if scale is not None:
                a.mul_(inv[r0:r1] if inv.dim() else inv)
            if 1.0 in sums:
                sums[1.0][r0:r1] += _sum_rows_f64(a)
            if not fractional:
                continue
            zeros = False
            if fill_zeros:
                z = zbuf[:n].view_as(a)
                torch.lt(a, tiny, out=z)
                zeros = bool(z.any())
                if zeros:
                    a.add_(z)
            b = out[:n].view_as(a)
            for i, e in enumerate(fractional):
                last = i == len(fractional) - 1
                if e == 0.5:
                    x = a.sqrt_() if last else torch.sqrt(a, out=b)
                elif e == 2.0:
                    x = a.square_() if last else torch.mul(a, a, out=b)
                else:
                    x = a.pow_(e) if last else torch.pow(a, e, out=b)
                if zeros:
                    x.sub_(z)
                sums[e][r0:r1] += _sum_rows_f64(x)
    return sums


def _out_of_range(sums: dict[float, torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
    """Per row: did some |w|^e overflow, or the largest ones underflow, in the working dtype?"""
    stacked = torch.stack([s.reshape(-1) for s in sums.values()])
    any_nonzero = (stacked != 0).any(dim=0)
    bad = ~torch.isfinite(stacked) | ((stacked.abs() < _TINY[dtype]) & any_nonzero)
    return bad.any(dim=0)


def _sums_rows(w: torch.Tensor, mask: torch.Tensor | None, exps: Sequence[float]):
    """Per-output-unit power sums and remaining counts: rows of ``w`` reshaped to (out, −1)."""
    w = _as_float(w)
    mask = _as_mask(mask, w)
    w2 = w.reshape(w.shape[0], -1) if w.dim() else w.reshape(1, 1)
    m2 = None if mask is None else mask.reshape(w2.shape)
    d = (torch.full((w2.shape[0],), w2.shape[1], dtype=torch.float64) if m2 is None
         else torch.count_nonzero(m2, dim=1).to(torch.float64).cpu())
    sums = _power_sums_2d(w2, m2, exps)
    if bool(_out_of_range(sums, _work_dtype(w2)).any()):
        a = w2.abs() if m2 is None else w2.abs() * m2
        maxabs = a.amax(dim=1).to(torch.float64)
        sums = _power_sums_2d(w2, m2, exps, torch.where(maxabs > 0, maxabs, torch.ones_like(maxabs)))
    return {e: s.cpu() for e, s in sums.items()}, d


def _sums_flat(pairs: Sequence[tuple[torch.Tensor, torch.Tensor | None]], exps: Sequence[float]):
    """Power sums over all unmasked entries of several (weight, mask) pairs, and d (their count)."""
    pairs = [(w, _as_mask(m, w)) for w, m in ((_as_float(w), m) for w, m in pairs)]
    d, flat = 0, []
    for w, mask in pairs:
        kept = w.numel() if mask is None else int(torch.count_nonzero(mask))
        d += kept
        # nothing masked: skip the multiply
        flat.append((w.reshape(1, -1), None if mask is None or kept == w.numel() else mask.reshape(1, -1)))

    def total(scale):
        sums = {e: torch.zeros((), dtype=torch.float64) for e in exps}
        bad = False
        for w, mask in flat:
            part = _power_sums_2d(w, mask, exps, scale)
            bad = bad or bool(_out_of_range(part, _work_dtype(w)).any())
            for e in exps:
                sums[e] += part[e][0].cpu()
        return sums, bad

    sums, bad = total(None)
    if bad:  # rare: weights beyond ~1e±10 (float32); one common scale keeps the sums comparable
        maxabs = max((float((w.abs() if m is None else w.abs() * m).max()) for w, m in flat if w.numel()), default=0.0)
        sums, _ = total(torch.tensor(maxabs if maxabs > 0 else 1.0, dtype=torch.float64))
    return sums, torch.tensor(float(d), dtype=torch.float64)


def _pq_from_sums(sp: torch.Tensor, sq: torch.Tensor, d: torch.Tensor, p: float, q: float) -> torch.Tensor:
    """I = 1 − (S_p/d)^{1/p} / (S_q/d)^{1/q}, in the log domain, with the edge cases defined.

    Rounding can push I a hair outside Theorem 1's range [0, 1 − d^{1/q−1/p}]; it is clipped
    back (so d = 1 gives exactly 0, and a 1-sparse vector exactly the maximum)."""
    sp, sq, d = sp.double(), sq.double(), d.double()
    ok = (d > 0) & (sp > 0) & (sq > 0)
    safe_d = torch.where(ok, d, torch.ones_like(d))
    log_ratio = (torch.log(torch.where(ok, sp, torch.ones_like(sp)) / safe_d) / p
                 - torch.log(torch.where(ok, sq, torch.ones_like(sq)) / safe_d) / q)
    value = -torch.expm1(log_ratio)
    upper = -torch.expm1((1.0 / q - 1.0 / p) * torch.log(safe_d))
    value = torch.minimum(value.clamp_min(0.0), upper)
    return torch.where(ok, value, torch.zeros_like(value))


def pq_index(w: torch.Tensor, p: float = 0.5, q: float = 1.0, mask: torch.Tensor | None = None) -> float:
    """PQ Index of all entries of one tensor (Diao et al. 2023, Definition 1).

    Args:
        w: weights, any shape.
        p: the smaller exponent, 0 < p < q.
        q: the larger exponent.
        mask: optional bool tensor of ``w``'s shape; only entries where it is True count, and
            d is their number.

    Returns:
        I_{p,q} as a float in [0, 1 − d^{1/q−1/p}]; 0 when d = 0 or every remaining weight is 0.

    Raises:
        ConfigError: unless 0 < p < q.

    Example:
        >>> pq_index(torch.tensor([1.0, 0.0, 0.0, 0.0]))   # 1 - 4**(1 - 2) = 0.75
        0.75
    """
    p, q = check_pq(p, q)
    sums, d = _sums_flat([(w, mask)], (p, q))
    return float(_pq_from_sums(sums[p], sums[q], d, p, q))


def _grid(sums, d, ps, qs) -> torch.Tensor:
    out = torch.full((len(ps), len(qs)) + tuple(d.shape), float("nan"), dtype=torch.float64)
    for i, p in enumerate(ps):
        for j, q in enumerate(qs):
            if p < q:
                out[i, j] = _pq_from_sums(sums[p], sums[q], d, p, q)
    return out


def _check_grid(ps, qs) -> tuple[tuple[float, ...], tuple[float, ...]]:
    ps, qs = tuple(float(p) for p in ps), tuple(float(q) for q in qs)
    if not ps or not qs or any(not (math.isfinite(v) and v > 0) for v in ps + qs):
        raise ConfigError("the p and q grids must be non-empty lists of positive numbers")
    return ps, qs


def pq_index_grid(
    w: torch.Tensor,
    mask: torch.Tensor | None = None,
    ps: Sequence[float] = P_GRID,
    qs: Sequence[float] = Q_GRID,
) -> torch.Tensor:
    """PQ Index of one tensor for every (p, q) of a grid, in one pass per exponent.

    Args:
        w: weights, any shape.
        mask: optional bool tensor (True = remaining).
        ps: the p values (default 0.1, 0.2, …, 1.0, as the paper's code).
        qs: the q values (default 1.0, 1.1, …, 2.0).

    Returns:
        float64 tensor of shape ``(len(ps), len(qs))``; NaN where p ≥ q.
    """
    ps, qs = _check_grid(ps, qs)
    sums, d = _sums_flat([(w, mask)], tuple(dict.fromkeys(ps + qs)))
    return _grid(sums, d, ps, qs)


def gini_index(w: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    """Gini index of the remaining |w| (Hurley & Rickard 2009; logged by the paper's code).

    With c_(1) ≤ … ≤ c_(N) the sorted magnitudes, G = Σ_k (2k − N − 1) c_(k) / (N Σ_k c_(k)),
    which equals 1 − 2 Σ_k (c_(k)/‖c‖₁)((N − k + ½)/N). 0 for a constant vector, 1 − 1/N for a
    1-sparse one. N = 0 or all zeros: 0 (the paper's code adds 1e-7 to every magnitude instead).

    Args:
        w: weights, any shape.
        mask: optional bool tensor (True = remaining).

    Returns:
        G as a float in [0, 1).
    """
    return float(_gini_rows(*_abs_remaining(w, mask), rows=False))


def _abs_remaining(w, mask) -> tuple[torch.Tensor, torch.Tensor | None]:
    """|w| in float64 with masked entries set to 0, and the mask as bool (or None)."""
    w = _as_float(w)
    mask = _as_mask(mask, w)
    a = w.to(torch.float64).abs()
    return (a if mask is None else a.masked_fill_(mask.logical_not(), 0)), mask


def _gini_rows(a: torch.Tensor, mask: torch.Tensor | None, rows: bool) -> torch.Tensor:
    a = a.reshape(a.shape[0], -1) if rows else a.reshape(1, -1)
    if mask is None:
        n = torch.full((a.shape[0],), a.shape[1], dtype=torch.float64)
    else:
        m = mask.reshape(a.shape)
        n = m.sum(dim=1).to(torch.float64)
        a = a.masked_fill(~m, float("inf"))  # pushed past the N remaining entries by the sort
    c = torch.sort(a, dim=1).values
    k = torch.arange(1, a.shape[1] + 1, dtype=torch.float64)
    inside = k[None, :] <= n[:, None]
    c = torch.where(inside, c, torch.zeros_like(c))
    total = c.sum(dim=1)
    num = ((2 * k[None, :] - n[:, None] - 1) * c).sum(dim=1)
    ok = (n > 0) & (total > 0)
    g = torch.where(ok, num / torch.where(ok, n * total, torch.ones_like(total)), torch.zeros_like(total))
    return g if rows else g[0]


# -- model level ----------------------------------------------------------------------------------

def _weights_and_masks(model, masks: Mapping[str, torch.Tensor] | None):
    """(name, weight, mask-or-None) for every prunable weight; the masks decide which weights.

    ``model`` is a module or a ``name -> tensor`` mapping (e.g. a state dict)."""
    if isinstance(model, nn.Module):
        params = dict(model.named_parameters())
        if masks is None:
            from prunelab.core.masks import prunable_parameters

            return [(n, p, None) for n, p in prunable_parameters(model).items()]
    elif isinstance(model, Mapping):
        params = dict(model)
        if masks is None:
            return [(n, w, None) for n, w in params.items() if w.dim() > 1 and w.is_floating_point()]
    else:
        raise ConfigError(f"expected an nn.Module or a mapping name -> tensor, got {type(model).__name__}")
    out = []
    for name, mask in masks.items():
        if name not in params:
            raise MaskError(f"mask {name!r} names no parameter of the model; were the masks made for another model?")
        if tuple(mask.shape) != tuple(params[name].shape):
            raise MaskError(f"mask {name!r} has shape {tuple(mask.shape)} but the parameter has "
                            f"{tuple(params[name].shape)}")
        out.append((name, params[name], mask))
    return out


def _model_sums(model, masks, scope, exps):
    """{key: (sums by exponent, d)} for the scope: key 'global', a layer name, or a layer name
    with per-row tensors (neuron)."""
    exps = tuple(dict.fromkeys(exps))
    items = _weights_and_masks(model, masks)
    if scope == "global":
        sums, d = _sums_flat([(w, m) for _, w, m in items], exps)
        return {"global": (sums, d)}
    if scope == "neuron":
        items = _neurons_as_rows(model, items)
    return {name: _sums_flat([(w, m)], exps) if scope == "layer" else _sums_rows(w, m, exps) for name, w, m in items}


def _neurons_as_rows(model, items):
    """``items`` with HuggingFace ``Conv1D`` weights and masks, stored ``(in, out)``, transposed (rows = neurons)."""
    flip = input_first_weights(model, [n for n, _, _ in items]) if isinstance(model, nn.Module) else ()
    return [(n, w.T, None if m is None else m.T) if n in flip else (n, w, m) for n, w, m in items]


def pq_index_model(
    model: nn.Module | Mapping[str, torch.Tensor],
    masks: Mapping[str, torch.Tensor] | None = None,
    p: float = 0.5,
    q: float = 1.0,
    scope: str = "global",
) -> dict[str, float | torch.Tensor]:
    """PQ Index of a model's remaining prunable weights at one scope.

    Args:
        model: the network, or a ``name -> tensor`` mapping such as a state dict.
        masks: ``name -> bool tensor`` (a :class:`~prunelab.core.masks.Masks`); its names choose the
            weights and d counts its True entries. None: every prunable weight
            (``prunelab.core.masks.prunable_parameters``; for a mapping, every floating tensor with
            more than one dimension) with d = its size, zeros included.
        p: the smaller exponent, 0 < p < q.
        q: the larger exponent.
        scope: ``"global"`` (all weights together), ``"layer"`` (one value per weight tensor) or
            ``"neuron"`` (one value per output unit: a row of the weight reshaped to (out, −1);
            a column of a HuggingFace ``Conv1D`` weight of a module).

    Returns:
        ``{"global": float}``, ``{name: float}`` per layer, or ``{name: float64 tensor (out,)}``
        per neuron.

    Raises:
        ConfigError: bad p, q or scope. MaskError: masks that do not fit the model.
    """
    p, q = check_pq(p, q)
    _check_scope(scope)
    out = {}
    for key, (sums, d) in _model_sums(model, masks, scope, (p, q)).items():
        value = _pq_from_sums(sums[p], sums[q], d, p, q)
        out[key] = value if scope == "neuron" else float(value)
    return out


def pq_index_grid_model(
    model: nn.Module | Mapping[str, torch.Tensor],
    masks: Mapping[str, torch.Tensor] | None = None,
    scope: str = "global",
    ps: Sequence[float] = P_GRID,
    qs: Sequence[float] = Q_GRID,
) -> dict[str, torch.Tensor]:
    """PQ Index of a model on a p × q grid (the paper logs p ∈ 0.1..1.0 × q ∈ 1.0..2.0).

    Args:
        model: the network or a ``name -> tensor`` mapping, as in :func:`pq_index_model`.
        masks: as in :func:`pq_index_model`.
        scope: ``"global"``, ``"layer"`` or ``"neuron"``.
        ps: p values.
        qs: q values.

    Returns:
        ``key -> float64 tensor (len(ps), len(qs))`` (``(len(ps), len(qs), out)`` for neuron
        scope), NaN where p ≥ q; key ``"global"`` or a layer name.
    """
    _check_scope(scope)
    ps, qs = _check_grid(ps, qs)
    return {k: _grid(s, d, ps, qs) for k, (s, d) in _model_sums(model, masks, scope, ps + qs).items()}


def gini_index_model(
    model: nn.Module | Mapping[str, torch.Tensor],
    masks: Mapping[str, torch.Tensor] | None = None,
    scope: str = "global",
) -> dict[str, float | torch.Tensor]:
    """Gini index of a model's remaining prunable weights (same scopes and keys as
    :func:`pq_index_model`). Sorts the weights: O(d log d), slower than the PQ Index."""
    _check_scope(scope)
    items = _weights_and_masks(model, masks)
    if scope == "global":
        parts = [_abs_remaining(w, m) for _, w, m in items]
        a = torch.cat([x.reshape(-1) for x, _ in parts]) if parts else torch.zeros(0)
        has_mask = any(m is not None for _, m in parts)
        mask = torch.cat([(m if m is not None else torch.ones_like(x, dtype=torch.bool)).reshape(-1)
                          for x, m in parts]) if has_mask else None
        return {"global": float(_gini_rows(a, mask, rows=False))}
    out = {}
    for name, w, m in (_neurons_as_rows(model, items) if scope == "neuron" else items):
        g = _gini_rows(*_abs_remaining(w, m), rows=(scope == "neuron"))
        out[name] = g if scope == "neuron" else float(g)
    return out


def grid_to_lists(grid: torch.Tensor) -> list:
    """A 2-D grid as nested lists of floats, NaN as None (for JSON traces)."""
    return [[None if math.isnan(v) else float(v) for v in row] for row in grid.tolist()]
