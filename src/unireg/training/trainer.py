"""Unsupervised training of the deformation UNet on a frozen extractor, single process or
DistributedDataParallel (``torchrun --nproc_per_node N -m unireg.training ...``; gloo on CPU, nccl
on GPU).  Rank 0 writes checkpoints that carry their full config; ``--resume`` continues exactly."""

from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from ..align.refine import REG_SCALE
from ..losses import dice_loss, feature_mse, local_ncc
from ..models.registrar import DEFAULT_WORKING, Registrar, load_registrar
from ..spatial.grid import resize_field, warp
from ..spatial.integrate import integrate_velocity
from .config import TrainConfig
from .dataset import PairSynthesizer
from .synth_torch import TorchPairSynthesizer

__all__ = ["train", "validate"]


def _dist_info():
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    return world, rank


def _per_sample_grad_l2(field: torch.Tensor) -> torch.Tensor:
    nd = field.dim() - 2
    out = 0
    for ax in range(2, 2 + nd):
        d = torch.diff(field, dim=ax)
        out = out + (d * d).flatten(1).mean(1)
    return out / nd


def losses_for_batch(model: Registrar, net, batch: dict, lam: torch.Tensor, cfg: TrainConfig) -> dict:
    """All loss terms for one batch; ``net`` is the (possibly DDP-wrapped) UNet."""
    fixed, moving = batch["fixed"], batch["moving"]
    with torch.no_grad():
        ff = model.extract(fixed)
        fm = model.extract(moving)
    v = net(ff, fm, lam)
    disp_c = integrate_velocity(v, model.int_steps)
    disp = resize_field(disp_c, fixed.shape[2:])
    if cfg.similarity == "feature":
        sim = feature_mse(ff, warp(fm, disp))
    elif cfg.similarity == "ncc":
        sim = local_ncc(fixed, warp(moving, disp))
    else:  # "mind": modality-independent loss whatever the network's input
        from ..features import create_extractor

        mind = create_extractor("mind", model.ndim).to(fixed.device)
        sim = feature_mse(mind(fixed), warp(mind(moving), disp))
    reg = (REG_SCALE * lam * _per_sample_grad_l2(disp_c)).mean()
    terms = {"sim": sim, "reg": reg}
    if cfg.dice_weight > 0:
        lab_shape = batch["fixed_labels"].shape[2:]
        disp_l = disp if lab_shape == fixed.shape[2:] else resize_field(disp_c, lab_shape)  # coarse labels
        terms["dice"] = cfg.dice_weight * dice_loss(batch["fixed_labels"][:, 1:], warp(batch["moving_labels"], disp_l)[:, 1:])
    terms["loss"] = sum(terms.values())
    # progress on the pair's own scale: similarity relative to the unregistered pair (1 = learned nothing)
    with torch.no_grad():
        if cfg.similarity == "feature":
            terms["sim_ratio"] = sim.detach() / feature_mse(ff, fm).clamp_min(1e-12)
    return terms


@torch.no_grad()
def validate(model: Registrar, synth: PairSynthesizer, n_pairs: int, seed_base: int = 10_000_000, smoothness: float = 1.0,
             moving_contrast: str | None = None) -> dict:
    """Network-only validation on held-out random deformations (seeds never used in training)."""
    from ..spatial.jacobian import folding_stats, jacobian_determinant

    was_training = model.training
    model.eval()
    device = next(model.unet.parameters()).device
    before, after, fold = [], [], []
    for i in range(n_pairs):
        # the synthesizer may build pairs elsewhere (CPU): everything goes to the model's device
        b = {k: v.to(device) for k, v in synth.batch([seed_base + i], moving_contrast).items()}
        ff, fm = model.extract(b["fixed"]), model.extract(b["moving"])
        v = model(ff, fm, smoothness)
        disp = model.displacement(v, b["fixed"].shape[2:])
        fl = b["fixed_labels"].argmax(1)
        ml = b["moving_labels"]
        wl = warp(ml, disp).argmax(1)
        ml = ml.argmax(1)

        def dsc(a, c):
            vals = []
            for k in (1, 2):
                inter = ((a == k) & (c == k)).sum().item()
                vals.append(2 * inter / max(((a == k).sum() + (c == k).sum()).item(), 1))
            return float(np.mean(vals))

        before.append(dsc(fl, ml))
        after.append(dsc(fl, wl))
        fold.append(folding_stats(jacobian_determinant(disp.cpu()))["folded_percent"])
    model.train(was_training)
    return {"pairs": n_pairs, "dice_before": float(np.mean(before)), "dice_after": float(np.mean(after)),
            "folded_percent": float(np.mean(fold))}


def net_kwargs(cfg: TrainConfig) -> dict:
    if cfg.arch == "corr":
        return {"arch": "corr", "width": list(cfg.width), "radius": list(cfg.radius), "convs": int(cfg.convs),
                "out_scale": float(cfg.out_scale)}
    return {"enc": cfg.enc, "dec": cfg.dec}


def make_synth(cfg: TrainConfig, spacing: float, device, label_stride: int | None = None):
    """The pair source of ``cfg``: batched on ``device`` (torch) or per pair on the CPU (legacy)."""
    if cfg.synth == "legacy":
        return PairSynthesizer(cfg.ndim, spacing, cfg.crop, cfg.max_disp_mm, cfg.contrasts, cfg.bias, cfg.noise,
                               cfg.rot_deg, cfg.scale, cfg.trans_mm)
    return TorchPairSynthesizer(cfg.ndim, spacing, cfg.crop, cfg.contrasts, device, cfg.max_disp_mm,
                                cfg.rel_rot_deg, cfg.rel_scale, cfg.rel_shear, cfg.rel_trans_mm,
                                cfg.subj_rot_deg, cfg.subj_scale, cfg.gamma, cfg.bias, cfg.noise, cfg.invert,
                                label_stride=cfg.label_stride if label_stride is None else label_stride)


def train(cfg: TrainConfig) -> Path:
    """Train (or resume) and return the checkpoint path written by rank 0."""
    world, rank = _dist_info()
    use_dist = world > 1
    device = torch.device(cfg.device if cfg.device != "cuda" else f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}")
    if use_dist and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    torch.manual_seed(cfg.seed + rank)
    np.random.seed(cfg.seed + rank)
    spacing = cfg.spacing or DEFAULT_WORKING[cfg.ndim]["spacing"]
    out = Path(cfg.out)
    step0 = 0
    history: list[dict] = []
    model = Registrar(cfg.ndim, extractor=cfg.extractor, unet=net_kwargs(cfg), trained=True,
                      working=dict(DEFAULT_WORKING[cfg.ndim], spacing=spacing),
                      meta={"name": out.stem, "train_config": cfg.to_dict()})
    ckpt = None
    if cfg.resume and out.is_file():
        ckpt = torch.load(out, map_location=device, weights_only=False)
        model.unet.load_state_dict(ckpt["state_dict"])
    # model on its device first, THEN the optimiser (and its restored state) on those parameters
    model = model.to(device)
    opt = torch.optim.Adam(model.unet.parameters(), lr=cfg.lr)
    if ckpt is not None:
        if "optimizer" in ckpt["extra"]:
            opt.load_state_dict(ckpt["extra"]["optimizer"])
        elif rank == 0:  # shipped weights carry no optimiser state (kept small)
            print(f"{out}: no optimiser state, continuing with a fresh Adam", flush=True)
        step0 = int(ckpt["extra"]["step"])
        history = list(ckpt["extra"].get("history", []))
        del ckpt
    net = model.unet
    if use_dist:
        net = torch.nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
    synth = make_synth(cfg, spacing, device)
    val_synth = make_synth(cfg, spacing, device, label_stride=1)
    rng = np.random.default_rng(cfg.seed * 1000 + rank)
    model.train()
    t_start = time.perf_counter()
    elapsed_before = float(history[-1]["elapsed_s"]) if history else 0.0
    last_log = t_start
    done_steps = 0

    def save(step: int):
        if rank != 0:
            return
        model.meta["steps"] = step
        model.meta["train_time_s"] = round(elapsed_before + time.perf_counter() - t_start, 1)
        model.save(out, extra={"step": step, "optimizer": opt.state_dict(), "history": history,
                               "train_config": cfg.to_dict()})

    step = step0
    for step in range(step0, cfg.steps):
        # sample seeds: disjoint across ranks, reproducible per step
        seeds = [cfg.seed * 1_000_003 + (step * world + rank) * cfg.batch_size + i for i in range(cfg.batch_size)]
        batch = {k: v.to(device) for k, v in synth.batch(seeds).items()}
        lam = torch.from_numpy(np.exp(rng.uniform(math.log(cfg.lambda_min), math.log(cfg.lambda_max), cfg.batch_size))).float().to(device)
        terms = losses_for_batch(model, net, batch, lam, cfg)
        if cfg.warmup_steps:
            for grp in opt.param_groups:
                grp["lr"] = cfg.lr * min(1.0, (step + 1) / cfg.warmup_steps)
        opt.zero_grad(set_to_none=True)
        terms["loss"].backward()
        opt.step()
        done_steps += 1
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            now = time.perf_counter()
            rec = {"step": step + 1, **{k: round(float(v.detach()), 5) for k, v in terms.items()},
                   "elapsed_s": round(elapsed_before + now - t_start, 1),
                   "steps_per_s": round(cfg.log_every * world / max(now - last_log, 1e-9), 3)}
            last_log = now
            history.append(rec)
            if rank == 0:
                print(" ".join(f"{k}={v}" for k, v in rec.items()), flush=True)
        if (step + 1) % cfg.checkpoint_every == 0:
            save(step + 1)
        if cfg.time_limit_min and (time.perf_counter() - t_start) > 60 * cfg.time_limit_min:
            if rank == 0:
                print(f"time limit reached at step {step + 1}", flush=True)
            break
    final_step = step + 1 if done_steps else step0
    # the trained weights are on disk before anything else can fail
    save(final_step)
    if rank == 0 and cfg.val_pairs > 0:
        val = validate(model, val_synth, cfg.val_pairs)
        model.meta["validation"] = val
        print("validation " + " ".join(f"{k}={v}" for k, v in val.items()), flush=True)
        save(final_step)
    if use_dist:
        dist.barrier()
        dist.destroy_process_group()
    return out


def main(argv=None) -> int:
    from ..errors import UniRegError
    from .config import parse_config

    try:
        cfg = parse_config(argv)
        path = train(cfg)
    except UniRegError as exc:
        print(f"unireg train: error: {exc}", file=sys.stderr)
        return 2
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"checkpoint: {path}")
    return 0
