"""Pruning models prunelab does not ship, in loops it does not own: one JSON object of checks.

Covers a HuggingFace GPT-2 (tied and untied output layer: exact magnitude counts, coverage,
checkpoint round trip), nn.TransformerEncoder (attention weights pruned, sparse export never
raising), a user's own loop (Masks.attach, GMP and LTP step hooks, DataLoader + AdamW + cosine),
layer-wise methods calibrated from a DataLoader vs a tensor, torch.compile / DDP wrappers, and
gRDA / GMP / LTP / L-OBS / magnitude on GPT-2 with a language-model loss through loss_fn.
Seeds, data and sizes differ from the tests'. Needs transformers (pip install "prunelab[hf]").

    OMP_NUM_THREADS=1 python benchmarks/any_model_check.py
"""
import copy, itertools, json, os, tempfile, warnings
import torch, torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
import prunelab
from prunelab.export import to_sparse
from transformers import GPT2Config, GPT2LMHeadModel
warnings.simplefilter("ignore")
torch.manual_seed(123)
out = {}
def gpt(tied):
    return GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=500, n_positions=64, tie_word_embeddings=tied))
def weights_of(m):
    return {n: p for n, p in prunelab.prunable_parameters(m).items()}
# 1 GPT-2 tied / untied
for tied in (True, False):
    m = gpt(tied); ws = weights_of(m); n = sum(p.numel() for p in ws.values())
    masks = prunelab.prune(m, "magnitude", sparsity=0.8)
    zeros = sum(int((p == 0).sum()) for p in ws.values())
    m2 = gpt(tied); ml = prunelab.prune(m2, "magnitude", sparsity=0.8, scope="layer")
    layer_exact = all(int((p == 0).sum()) == round(0.8 * p.numel()) for p in weights_of(m2).values())
    ids = torch.randint(0, 500, (2, 16)); logits = m(input_ids=ids).logits
    cov = masks.coverage(m)
    all_mat = sum(p.numel() for p in m.parameters() if p.dim() >= 2)
    emb = prunelab.prune(gpt(tied), "magnitude", sparsity=0.8, rule=prunelab.PrunableRule(embeddings=True))
    with tempfile.TemporaryDirectory() as d:
        prunelab.save_checkpoint(f"{d}/g.safetensors", m, masks)
        m3 = gpt(tied); ck = prunelab.load_checkpoint(f"{d}/g.safetensors", m3)
        bit = all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), m3.state_dict().values())) and ck.masks.equal(masks)
    out[f"gpt2_{'tied' if tied else 'untied'}"] = {
        "matrices": len(ws), "entries": n, "zeros": zeros, "expected": round(0.8 * n), "exact_global": zeros == round(0.8 * n),
        "exact_every_layer_scope_layer": layer_exact, "lm_head_in_masks": "lm_head.weight" in masks,
        "forward_finite": bool(torch.isfinite(logits).all()),
        "coverage": [cov.covered, cov.total, round(cov.fraction, 4)], "coverage_true": cov.covered == n and cov.total == all_mat,
        "left_dense": [k for k, _ in cov.left_out],
        "with_embeddings": {"names": len(emb), "tied_once": sum(1 for k in emb if "wte" in k or "lm_head" in k)},
        "checkpoint_roundtrip_bit_identical": bit}
# 2 TransformerEncoder
enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(64, 4, 128, batch_first=True), 2)
masks = prunelab.prune(enc, "magnitude", sparsity=0.5)
inproj = [k for k in masks if "in_proj_weight" in k]
enc.eval()
x = torch.randn(3, 10, 64)
try:
    fast = to_sparse(enc, example_input=x); err = None
    ld = fast.sparse_report.get("left_dense", {})
except Exception as e:
    err = repr(e); ld = {}
out["transformer_encoder"] = {"in_proj_pruned": [k for k in inproj if masks[k].float().mean() < 1], "to_sparse_error": err,
                              "left_dense_with_reason": len(ld), "example_reason": next(iter(ld.items()), None)}
# 3 user loop: DataLoader + AdamW + cosine, 200 steps, one call
torch.manual_seed(7)
X = torch.randn(800, 20); Y = (X[:, :5].sum(1) > 0).long() + (X[:, 5] > 1).long()
loader = DataLoader(TensorDataset(X, Y), batch_size=25, shuffle=True)
def mlp():
    torch.manual_seed(3); return nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 3))
net = mlp(); masks = prunelab.prune(net, "magnitude", sparsity=0.7)
opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=0.05)
sch = torch.optim.lr_scheduler.CosineAnnealingLR(opt, 200)
h = masks.attach(opt, net)
drift = 0
for xb, yb in itertools.islice(itertools.cycle(loader), 200):
    F.cross_entropy(net(xb), yb).backward(); opt.step(); opt.zero_grad(); sch.step()
    drift = max(drift, sum(int((p[~masks[n]] != 0).sum()) for n, p in net.named_parameters() if n in masks))
out["own_loop_attach_200_steps"] = {"pruned_expected": masks.pruned(), "nonzero_at_pruned_max": drift,
                                    "zeros_end": sum(int((p == 0).sum()) for n, p in net.named_parameters() if n in masks)}
from prunelab.methods.gmp import GradualMagnitudePruning
from prunelab.methods.ltp import LearnedThresholds
net = mlp(); opt = torch.optim.AdamW(net.parameters(), lr=3e-3); sch = torch.optim.lr_scheduler.CosineAnnealingLR(opt, 200)
gmp = GradualMagnitudePruning(final_sparsity=0.9, begin_step=20, end_step=160, frequency=20); gmp.attach(opt, net)
for xb, yb in itertools.islice(itertools.cycle(loader), 200):
    F.cross_entropy(net(xb), yb).backward(); opt.step(); opt.zero_grad(); sch.step()
out["gmp_own_loop"] = {"pruned": gmp.masks.pruned(), "expected": round(0.9 * gmp.masks.total()),
                       "zeros_in_weights": sum(int((p == 0).sum()) for n, p in net.named_parameters() if n in gmp.masks)}
net = mlp(); ltp = LearnedThresholds(net, penalty_weight=3.0, target_compression=8)
opt = torch.optim.AdamW(ltp.parameter_groups(threshold_lr=0.05), lr=3e-3); sch = torch.optim.lr_scheduler.CosineAnnealingLR(opt, 200)
ltp.attach(opt); steps = 0
for xb, yb in itertools.islice(itertools.cycle(loader), 200):
    (F.cross_entropy(ltp.model(xb), yb) + ltp.penalty_term()).backward(); opt.step(); opt.zero_grad(); sch.step(); steps += 1
    if ltp.reached: break
_, lm = ltp.hard_model()
out["ltp_own_loop"] = {"reached": ltp.reached, "steps": steps, "compression": round(lm.total() / lm.kept(), 3)}
for method in ("lobs", "feta"):
    res = {}
    for kind, calib in (("loader", DataLoader(TensorDataset(X[:300], Y[:300]), batch_size=100)), ("tensor", X[:300])):
        m = mlp(); mk = prunelab.prune(m, method, sparsity=0.5, calib=calib)
        res[kind] = {n: int(v.sum()) for n, v in mk.items()}
    res["same_masks_loader_vs_tensor"] = res["loader"] == res["tensor"]
    out[f"{method}_calib"] = res
# 4 wrappers
import torch.distributed as dist
net = mlp(); masks = prunelab.prune(net, "magnitude", sparsity=0.6)
comp = torch.compile(mlp(), backend="eager")
masks.apply(comp); a = masks.equal(prunelab.Masks.from_nonzero(comp._orig_mod))
cm = prunelab.Masks({f"_orig_mod.{k}": v for k, v in masks.items()}); fresh = mlp(); cm.apply(fresh)
b = all(int((p == 0).sum()) == int((~masks[n]).sum()) for n, p in fresh.named_parameters() if n in masks)
with tempfile.TemporaryDirectory() as d:
    dist.init_process_group("gloo", init_method=f"file://{d}/s", rank=0, world_size=1)
    ddp = nn.parallel.DistributedDataParallel(mlp()); masks.apply(ddp)
    c = prunelab.Masks.from_nonzero(ddp.module).equal(masks)
    prunelab.save_checkpoint(f"{d}/ddp.safetensors", ddp, masks); ck = prunelab.load_checkpoint(f"{d}/ddp.safetensors", mlp())
    e = ck.masks.equal(masks)
    dist.destroy_process_group()
out["wrappers"] = {"plain_masks_on_compile": a, "compile_prefixed_masks_on_plain": b, "plain_masks_on_ddp": c, "ddp_checkpoint_into_plain": e}
# 5 GPT-2 with LM loss through loss_fn
ids = torch.randint(0, 500, (48, 24))
lm_loader = DataLoader(TensorDataset(ids), batch_size=8)
fwd = lambda model, batch: model(input_ids=batch[0])
def lm_loss(o, batch):
    lg = o.logits[:, :-1]; return F.cross_entropy(lg.reshape(-1, lg.shape[-1]), batch[0][:, 1:].reshape(-1))
cfg = prunelab.TrainConfig(epochs=1, optimizer="adamw", lr=1e-3)
r = {}
from prunelab.methods.grda import train_grda
m = gpt(True); hist, _ = train_grda(m, lm_loader, prunelab.TrainConfig(epochs=2, lr=0.05, schedule="constant"), c=0.02, mu=0.6, schedule="constant", forward_fn=fwd, loss_fn=lm_loss)
r["grda_zero_fraction"] = round(sum(int((p == 0).sum()) for p in weights_of(m).values()) / sum(p.numel() for p in weights_of(m).values()), 4)
m = gpt(True); gm = GradualMagnitudePruning(final_sparsity=0.5, begin_step=0, end_step=4, frequency=2)
st = prunelab.train(m, lm_loader, cfg, masks=prunelab.Masks.ones(m), callbacks=[gm], forward_fn=fwd, loss_fn=lm_loss)
r["gmp_sparsity"] = round(st.masks.sparsity(), 4)
from prunelab.methods.ltp import learn_thresholds
m = gpt(True); trail, _ = learn_thresholds(m, lm_loader, prunelab.TrainConfig(epochs=2, lr=0.05), penalty_weight=2.0, forward_fn=fwd, loss_fn=lm_loss, check_every=2)
r["ltp_trail_compressions"] = [round(e.compression, 3) for e in trail]
m = gpt(True); mk = prunelab.prune(m, "lobs", sparsity=0.5, calib=lm_loader, forward_fn=fwd)
r["lobs_kept_fraction_per_layer"] = sorted({round(int(v.sum()) / v.numel(), 4) for v in mk.values() if v.float().mean() < 1})
r["lobs_layers_pruned"] = sum(1 for v in mk.values() if v.float().mean() < 1)
m = gpt(True); mk = prunelab.prune(m, "magnitude", sparsity=0.5)
st = prunelab.train(m, lm_loader, cfg, masks=mk, forward_fn=fwd, loss_fn=lm_loss)
r["magnitude_then_train_sparsity"] = round(prunelab.Masks.from_nonzero(m).sparsity(), 4)
r["lm_eval_loss"] = round(prunelab.evaluate(m, lm_loader, forward_fn=fwd, loss_fn=lm_loss)["loss"], 3)
out["gpt2_lm_loss_methods"] = r
print(json.dumps(out, indent=1, default=str))
