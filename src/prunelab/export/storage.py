"""Compact storage of a pruned model: sparse encodings in safetensors, JSON metadata, never pickle.

Every parameter and buffer is stored in whichever of four encodings takes the fewest bytes:

- ``dense``: the tensor as is.
- ``csr``: the tensor viewed as ``(shape[0], rest)``; the non-zero values, their column indices
  in the narrowest unsigned type that holds ``rest - 1`` (uint8/16/32), and per-row counts in the
  narrowest type that holds ``rest`` (the row pointer is their cumulative sum).
- ``gaps``: the values and, in flat order, one uint8 code per non-zero giving the number of zeros
  skipped before it (0-254); code 255 skips 255 zeros without placing a value. This is the
  relative indexing of Deep Compression (Han et al. 2016, arXiv:1510.00149, §3) with an escape
  code instead of filler zeros: about 1 byte per non-zero while gaps stay under 255.
- ``bitmap``: one bit per entry (non-zero or not, ``numpy.packbits`` order) and the values.

So at density d a float32 weight costs about ``4 d`` bytes of values plus ``d`` (gaps, while
``1/d`` stays well under 255), ``2 d`` (CSR with 16-bit columns) or ``1/8`` (bitmap) of index:
gaps win at moderate sparsity, CSR at extreme sparsity, the bitmap above d ~ 1/8, dense near 1.
Values are copied bit for bit. Zeros come back as ``+0.0``; if a tensor holds ``-0.0`` entries
their positions are stored too (bitmap or flat indices, the smaller), so the round trip is exact
for any model (:func:`make_permanent` writes ``+0.0`` and then pays nothing for this).
Masks are stored as bitmaps, or as a flag when a mask equals its weight's non-zero pattern.
A SHA-256 of all stored bytes is kept in the metadata, so damage is reported, not loaded.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch import nn

from prunelab.errors import CheckpointError
from prunelab.core.checkpoints import buffer_aliases, read_safetensors, rebuild_model
from prunelab.core.prunable import canonical_name, model_parameters, parameter_aliases, unwrap
from prunelab.utils.io import atomic_path

__all__ = ["save_sparse", "load_sparse", "storage_sizes", "FORMAT"]

FORMAT = "prunelab-sparse"
VERSION = 1
_DTYPES = {str(d): d for d in (torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.uint8, torch.int8,
                                torch.int16, torch.int32, torch.int64, torch.bool, torch.uint16, torch.uint32)}
_UNSIGNED = ((0xFF, torch.uint8), (0xFFFF, torch.uint16), (0xFFFFFFFF, torch.uint32), (2**63 - 1, torch.int64))


def _narrowest(max_value: int) -> torch.dtype:
    for limit, dtype in _UNSIGNED:
        if max_value <= limit:
            return dtype
    raise ValueError(max_value)


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty(0, dtype=dtype).element_size()


def _pack(bits: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(np.packbits(bits.reshape(-1).numpy().astype(np.uint8)))


def _unpack(packed: torch.Tensor, count: int) -> torch.Tensor:
    if packed.dtype != torch.uint8 or packed.numel() != (count + 7) // 8:
        raise ValueError("bitmap has the wrong size")
    return torch.from_numpy(np.unpackbits(packed.numpy(), count=count).astype(bool))


def _negative_zeros(t: torch.Tensor) -> torch.Tensor | None:
    if not t.is_floating_point():
        return None
    neg = (t == 0) & torch.signbit(t)
    return neg if bool(neg.any()) else None


def _encode_positions(bits: torch.Tensor, key: str, tensors: dict) -> dict:
    """Store the set ``bits`` (bool, any shape) as a bitmap or flat indices, the smaller."""
    flat = bits.reshape(-1)
    count = int(flat.sum())
    index_dtype = _narrowest(max(flat.numel() - 1, 0))
    if count * _itemsize(index_dtype) < (flat.numel() + 7) // 8:
        tensors[key] = flat.nonzero()[:, 0].to(index_dtype)
        return {"encoding": "indices", "count": count}
    tensors[key] = _pack(flat)
    return {"encoding": "bitmap", "count": count}


def _decode_positions(info: dict, key: str, tensors: Mapping, numel: int) -> torch.Tensor:
    if info["encoding"] == "bitmap":
        bits = _unpack(tensors[key], numel)
    elif info["encoding"] == "indices":
        idx = tensors[key].to(torch.int64)
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= numel):
            raise ValueError("position index out of range")
        bits = torch.zeros(numel, dtype=torch.bool)
        bits[idx] = True
    else:
        raise ValueError(f"unknown position encoding {info['encoding']!r}")
    if int(bits.sum()) != int(info["count"]):
        raise ValueError("position count mismatch")
    return bits


def _gap_codes(flat_nonzero: torch.Tensor) -> np.ndarray:
    """uint8 codes of the ``gaps`` encoding for a flat bool pattern (see the module docstring)."""
    positions = np.flatnonzero(flat_nonzero.numpy())
    skipped = np.diff(positions, prepend=-1) - 1          # zeros before each non-zero
    escapes = skipped // 255
    codes = np.full(int(positions.size + escapes.sum()), 255, dtype=np.uint8)
    codes[np.cumsum(escapes + 1) - 1] = skipped % 255
    return codes


def _gap_positions(codes: torch.Tensor, count: int, numel: int) -> torch.Tensor:
    codes = codes.numpy().astype(np.int64)
    is_value = codes < 255
    if int(is_value.sum()) != count:
        raise ValueError("gap codes and values disagree")
    ends = np.cumsum(np.where(is_value, codes + 1, 255)) - 1
    positions = ends[is_value]
    if positions.size and positions[-1] >= numel:
        raise ValueError("gap codes run past the end of the tensor")
    return torch.from_numpy(positions)


def _encode(name: str, t: torch.Tensor, tensors: dict) -> dict:
    """Choose the cheapest encoding of ``t``, add its parts to ``tensors``, return its metadata."""
    t = t.detach().cpu().contiguous()
    info = {"shape": list(t.shape), "dtype": str(t.dtype), "encoding": "dense"}
    numel, size = t.numel(), _itemsize(t.dtype)
    if t.dim() == 0 or numel == 0:
        tensors[f"{name}/dense"] = t.clone()
        return info
    nonzero = (t != 0).reshape(-1)
    nnz = int(nonzero.sum())
    rows = t.shape[0] if t.dim() > 1 else 1
    cols = numel // rows
    col_dtype, count_dtype = _narrowest(max(cols - 1, 0)), _narrowest(cols)
    gap_codes = _gap_codes(nonzero)
    costs = {
        "dense": numel * size,
        "csr": nnz * (size + _itemsize(col_dtype)) + rows * _itemsize(count_dtype),
        "gaps": gap_codes.size + nnz * size,
        "bitmap": (numel + 7) // 8 + nnz * size,
    }
    encoding = min(costs, key=lambda k: (costs[k], k != "dense"))
    info["encoding"] = encoding
    if encoding == "dense":
        tensors[f"{name}/dense"] = t.clone()
        return info
    flat = t.reshape(-1)
    tensors[f"{name}/values"] = flat[nonzero].clone()
    if encoding == "csr":
        grid = nonzero.reshape(rows, cols)
        tensors[f"{name}/cols"] = grid.nonzero()[:, 1].to(col_dtype)
        tensors[f"{name}/counts"] = grid.sum(dim=1).to(count_dtype)
        info.update(rows=rows, cols=cols)
    elif encoding == "gaps":
        tensors[f"{name}/gaps"] = torch.from_numpy(gap_codes)
    else:
        tensors[f"{name}/bitmap"] = _pack(nonzero)
    negative = _negative_zeros(t)
    if negative is not None:
        info["negzero"] = _encode_positions(negative, f"{name}/negzero", tensors)
    return info


def _decode(name: str, info: dict, tensors: Mapping) -> torch.Tensor:
    dtype = _DTYPES.get(info.get("dtype"))
    if dtype is None:
        raise ValueError(f"unsupported dtype {info.get('dtype')!r}")
    shape = [int(s) for s in info["shape"]]
    numel = int(np.prod(shape)) if shape else 1
    if info["encoding"] == "dense":
        t = tensors[f"{name}/dense"]
        if t.dtype != dtype or list(t.shape) != shape:
            raise ValueError("stored tensor does not match its recorded shape/dtype")
        return t.clone()
    values = tensors[f"{name}/values"]
    if values.dtype != dtype or values.dim() != 1:
        raise ValueError("values have the wrong dtype")
    if info["encoding"] == "csr":
        rows, cols = int(info["rows"]), int(info["cols"])
        counts, col = tensors[f"{name}/counts"].to(torch.int64), tensors[f"{name}/cols"].to(torch.int64)
        if rows * cols != numel or counts.numel() != rows or col.numel() != values.numel() \
                or int(counts.sum()) != values.numel() or (col.numel() and (int(col.min()) < 0 or int(col.max()) >= cols)):
            raise ValueError("inconsistent CSR structure")
        row = torch.repeat_interleave(torch.arange(rows), counts)
        positions = row * cols + col
        if positions.numel() > 1 and not bool((positions[1:] > positions[:-1]).all()):
            raise ValueError("CSR columns not strictly increasing")
        mask = torch.zeros(numel, dtype=torch.bool)
        mask[positions] = True
    elif info["encoding"] == "gaps":
        codes = tensors[f"{name}/gaps"]
        if codes.dtype != torch.uint8 or codes.dim() != 1:
            raise ValueError("gap codes have the wrong dtype")
        mask = torch.zeros(numel, dtype=torch.bool)
        mask[_gap_positions(codes, values.numel(), numel)] = True
    elif info["encoding"] == "bitmap":
        mask = _unpack(tensors[f"{name}/bitmap"], numel)
        if int(mask.sum()) != values.numel():
            raise ValueError("bitmap and values disagree")
    else:
        raise ValueError(f"unknown encoding {info['encoding']!r}")
    out = torch.zeros(numel, dtype=dtype)
    out[mask] = values
    if "negzero" in info:
        out[_decode_positions(info["negzero"], f"{name}/negzero", tensors, numel)] = -0.0
    return out.reshape(shape)


def _digest(tensors: Mapping[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for key in sorted(tensors):
        t = tensors[key].contiguous()
        h.update(key.encode() + b"\0" + str(t.dtype).encode() + str(list(t.shape)).encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every tensor of the unwrapped model under its canonical name (a tied tensor once)."""
    inner = unwrap(model)
    state = {f"param/{n}": p for n, p in inner.named_parameters()}
    state.update({f"buffer/{n}": b for n, b in inner.named_buffers()})
    return state


def _canonical_entries(model: nn.Module, entries: dict) -> dict:
    """``canonical key -> (stored key, info)``, keyed as :func:`_state` keys the model's tensors
    (a file written from a wrapped model may carry wrapper prefixes, a tied tensor an alias)."""
    aliases = {"param": parameter_aliases(model), "buffer": buffer_aliases(model)}
    out = {}
    for key, info in entries.items():
        kind, _, name = key.partition("/")
        canonical = canonical_name(name, aliases[kind]) if kind in aliases else None
        out[f"{kind}/{canonical}" if canonical else key] = (key, info)
    return out


def save_sparse(path, model: nn.Module, masks: Mapping[str, torch.Tensor] | None = None,
                meta: dict | None = None) -> Path:
    """Write ``model`` (all parameters and buffers) in the compact sparse format.

    Args:
        path: target file (``*.safetensors`` by convention); written atomically (temp + rename).
        model: the pruned model (or its ``torch.compile``/DDP wrapper; the plain model's
            canonical names are stored, a tied weight once); its ``prunelab_config`` is stored so
            :func:`load_sparse` can rebuild it with ``prunelab.models.create``.
        masks: optional masks to store as well (``name -> bool tensor``; canonical names, tied
            aliases or wrapper-prefixed names).
        meta: optional JSON-able metadata (metrics, provenance).

    Returns:
        The path written.

    Raises:
        MaskError: a mask does not fit the model.
    """
    from safetensors.torch import save_file

    from prunelab.core.masks import Masks

    tensors: dict[str, torch.Tensor] = {}
    entries = {key: _encode(key, t, tensors) for key, t in _state(model).items()}
    mask_info = {}
    if masks is not None:
        masks = Masks({n: m.to(torch.bool) for n, m in masks.items()}).canonical(model)
        params = model_parameters(model)
        for name, m in masks.items():
            m = m.detach().cpu().to(torch.bool)
            if torch.equal(m, params[name].detach().cpu() != 0):
                mask_info[name] = "nonzero"
            else:
                mask_info[name] = "bitmap"
                tensors[f"mask/{name}"] = _pack(m)
    document = {"format": FORMAT, "version": VERSION, "model": getattr(unwrap(model), "prunelab_config", None),
                "tensors": entries, "masks": mask_info, "meta": meta or {}, "sha256": _digest(tensors)}
    path = Path(path)
    with atomic_path(path, mkdir=True) as tmp:
        save_file(tensors, str(tmp), metadata={"prunelab": json.dumps(document, default=str)})
    return path


def _read(path: Path) -> tuple[dict, dict]:
    tensors, document = read_safetensors(path, noun="sparse export")
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a prunelab sparse export; write one with `prunelab export --format sparse`")
    if document.get("version") != VERSION:
        raise CheckpointError(f"{path}: sparse format version {document.get('version')!r} is not supported (expected {VERSION})")
    if document.get("sha256") != _digest(tensors):
        raise CheckpointError(f"{path}: checksum mismatch: the file is damaged; export it again")
    # The checksum covers the tensors, not this table that says how to decode them.
    entries, mask_info = document.get("tensors"), document.get("masks") or {}
    if not isinstance(entries, dict) or not all(_valid_entry(info) for info in entries.values()) \
            or not isinstance(mask_info, dict) or not all(isinstance(how, str) for how in mask_info.values()):
        raise CheckpointError(f"{path}: its table of tensors is damaged; export it again")
    return tensors, document


def _valid_entry(info) -> bool:
    """Whether a tensor's entry in the table has a shape of non-negative ints and string dtype and encoding."""
    shape = info.get("shape") if isinstance(info, dict) else None
    return (isinstance(shape, list) and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape)
            and isinstance(info.get("dtype"), str) and isinstance(info.get("encoding"), str))


def load_sparse(path, model: nn.Module | None = None):
    """Load a file written by :func:`save_sparse`; every tensor comes back bit for bit.

    Args:
        path: the file.
        model: a model to fill (or its ``torch.compile``/DDP wrapper); by default it is rebuilt
            with ``prunelab.models.create`` from the stored config.

    Returns:
        A :class:`prunelab.core.checkpoints.Checkpoint` ``(model, masks or None, meta)``; ``meta`` is
        the stored document (``meta["meta"]`` holds what was passed to :func:`save_sparse`).

    Raises:
        CheckpointError: missing, damaged or foreign file, or one that does not fit ``model``.
    """
    from prunelab.core.checkpoints import Checkpoint
    from prunelab.core.masks import Masks

    path = Path(path)
    tensors, document = _read(path)
    if model is None:
        held = sum(math.prod(info["shape"]) for key, info in document["tensors"].items() if key.startswith("param/"))
        model = rebuild_model(document.get("model"), path, stored_numel=held)
    state = _state(model)
    entries = _canonical_entries(model, document["tensors"])
    if set(entries) != set(state):
        missing, extra = sorted(set(state) - set(entries)), sorted(set(entries) - set(state))
        raise CheckpointError(f"{path}: does not fit the model (missing {missing[:5]}, unexpected {extra[:5]})")
    decoded = {}
    for key, (stored_key, info) in entries.items():
        # Checked before decoding: the model, not the file, says how much memory a tensor takes.
        target = state[key]
        if info.get("shape") != list(target.shape) or info.get("dtype") != str(target.dtype):
            raise CheckpointError(f"{path}: {key} is {info.get('shape')} {info.get('dtype')} in the file "
                                  f"but {list(target.shape)} {target.dtype} in the model")
        try:
            decoded[key] = _decode(stored_key, info, tensors)
        except (KeyError, ValueError, TypeError, RuntimeError, IndexError, OverflowError) as exc:
            raise CheckpointError(f"{path}: tensor {key} cannot be decoded ({exc}); the file is damaged") from None
    with torch.no_grad():
        for key, value in decoded.items():
            state[key].copy_(value)
    masks = None
    if document.get("masks"):
        params = model_parameters(model)
        aliases = parameter_aliases(model)
        found = {}
        for name, how in document["masks"].items():
            key = canonical_name(name, aliases)
            if key is None:
                raise CheckpointError(f"{path}: mask {name!r} names no parameter of the model")
            p = params[key].detach()
            try:
                found[key] = (p != 0) if how == "nonzero" else _unpack(tensors[f"mask/{name}"], p.numel()).reshape(p.shape)
            except (KeyError, ValueError, TypeError, RuntimeError) as exc:
                raise CheckpointError(f"{path}: mask {name} cannot be decoded ({exc})") from None
        masks = Masks(found)
    return Checkpoint(model=model, masks=masks, meta=document)


def storage_sizes(model: nn.Module, masks: Mapping[str, torch.Tensor] | None = None) -> dict:
    """Bytes of ``model`` as dense safetensors, as gzip (level 9) of that, in the sparse format,
    and as gzip of the sparse file.

    Args:
        model: the (pruned) model.
        masks: stored with the sparse file when given (the dense figures never include masks).

    Returns:
        ``{"dense_safetensors", "dense_gzip", "sparse", "sparse_gzip", "sparse_over_dense", "gzip_over_dense",
        "encodings": {tensor: encoding}}`` (bytes and ratios).
    """
    import tempfile

    from safetensors.torch import save as save_bytes

    dense = save_bytes({k: t.detach().cpu().contiguous() for k, t in _state(model).items()})
    with tempfile.TemporaryDirectory() as tmp:
        target = save_sparse(Path(tmp) / "model.safetensors", model, masks)
        sparse = target.stat().st_size
        document = _read(target)[1]
        sparse_packed = len(gzip.compress(target.read_bytes(), compresslevel=9))
    packed = len(gzip.compress(dense, compresslevel=9))
    return {"dense_safetensors": len(dense), "dense_gzip": packed, "sparse": sparse, "sparse_gzip": sparse_packed,
            "sparse_over_dense": round(sparse / len(dense), 4), "gzip_over_dense": round(packed / len(dense), 4),
            "encodings": {k: v["encoding"] for k, v in document["tensors"].items()}}
