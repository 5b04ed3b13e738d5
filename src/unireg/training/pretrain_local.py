"""Self-supervised pre-training of the local encoder (:class:`unireg.features.local.LocalEncoder`).

Data: the MNI ICBM152 2009a symmetric T1 shipped inside nilearn's wheel, averaged down to 2 mm.
A slab of 12 coronal rows (2 mm voxels ``y`` in ``HOLDOUT_Y``, frontal lobe) never enters training
and is used by :func:`evaluate`.

Objective: two views of the *same* patch under independent random intensity mappings (gamma,
random piecewise-linear LUT -- monotone or not --, inversion, multiplicative bias field, mild blur,
Gaussian noise) must give the same feature vector at each voxel and different vectors at different
voxels: a symmetric InfoNCE loss (temperature 0.1) over randomly sampled voxels, where the positive
of a voxel is the same voxel in the other view and the negatives are all other sampled voxels of the
batch except those of the same patch closer than ``min_dist`` voxels (4).

Usage::

    python -m unireg.training.pretrain_local --ndim 3 --steps 3000 --out local_3d.pt --seed 0 --threads 1
    python -m unireg.training.pretrain_local --ndim 3 --evaluate local_3d.pt --threads 1
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "HOLDOUT_Y",
    "mni_t1_path",
    "load_mni_2mm",
    "random_contrast",
    "sample_patches",
    "info_nce",
    "train",
    "evaluate",
    "main",
]

HOLDOUT_Y = (80, 92)  # rows of axis 1 (anterior) of the 2 mm volume kept out of training
FOREGROUND = 0.05  # intensity (of the [0, 1] template) above which a voxel is head


def mni_t1_path() -> Path:
    """Path of the MNI ICBM152 2009a T1 inside the installed nilearn package."""
    import nilearn

    return Path(os.path.dirname(nilearn.__file__), "datasets", "data", "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz")


def load_mni_2mm() -> torch.Tensor:
    """The MNI T1 averaged over 2x2x2 blocks, scaled to ``[0, 1]`` (99.5th percentile of the head -> 1).

    Returns a float32 tensor ``(98, 116, 94)`` in the template's (RAS) array order.
    """
    import nibabel as nib

    data = np.asarray(nib.load(str(mni_t1_path())).dataobj, dtype=np.float32)
    vol = F.avg_pool3d(torch.from_numpy(data)[None, None], 2)[0, 0]
    head = vol[vol > 0.05 * vol.max()]
    hi = torch.quantile(head[:: max(1, head.numel() // 500_000)], 0.995)
    return (vol / hi).clamp(0.0, 1.0).contiguous()


# ---------------------------------------------------------------------------------------- synthesis
def _uniform(gen: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=gen))


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``(N, C, *spatial)`` with replicate padding (``sigma`` in voxels)."""
    nd = x.dim() - 2
    r = max(1, int(math.ceil(2.5 * sigma)))
    t = torch.arange(-r, r + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    conv = F.conv2d if nd == 2 else F.conv3d
    c = x.shape[1]
    for axis in range(nd):
        shape = [1] * nd
        shape[axis] = 2 * r + 1
        pad = [0, 0] * nd
        pad[2 * (nd - 1 - axis)] = pad[2 * (nd - 1 - axis) + 1] = r
        x = conv(F.pad(x, pad, mode="replicate"), k.view(1, 1, *shape).expand(c, 1, *shape), groups=c)
    return x


def random_contrast(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """An independent random intensity remapping of each item of ``x`` ``(N, 1, *spatial)`` in [0, 1].

    Gamma, random piecewise-linear LUT (monotone with p=0.4, otherwise arbitrary), inversion
    (p=0.3), smooth multiplicative bias field (p=0.7), mild blur (p=0.5), Gaussian noise, and a
    random affine change of units (which the encoder's percentile rescaling removes).
    """
    nd = x.dim() - 2
    out = []
    for i in range(x.shape[0]):
        xi = x[i : i + 1].clamp(0.0, 1.0)
        xi = xi ** math.exp(0.4 * float(torch.randn((), generator=gen)))
        k = int(torch.randint(3, 9, (), generator=gen))
        lut = torch.rand(k, generator=gen)
        if float(torch.rand((), generator=gen)) < 0.4:
            lut = lut.sort().values
        pos = xi * (k - 1)
        i0 = pos.floor().clamp(0, k - 2)
        w = pos - i0
        i0 = i0.long()
        xi = lut[i0] * (1 - w) + lut[i0 + 1] * w
        if float(torch.rand((), generator=gen)) < 0.3:
            xi = 1.0 - xi
        if float(torch.rand((), generator=gen)) < 0.7:
            coarse = 0.25 * torch.randn((1, 1) + (4,) * nd, generator=gen)
            mode = "bilinear" if nd == 2 else "trilinear"
            xi = xi * torch.exp(F.interpolate(coarse, size=xi.shape[2:], mode=mode, align_corners=True))
        if float(torch.rand((), generator=gen)) < 0.5:
            xi = gaussian_blur(xi, _uniform(gen, 0.3, 1.0))
        xi = xi + _uniform(gen, 0.0, 0.05) * torch.randn(xi.shape, generator=gen)
        xi = xi * _uniform(gen, 0.5, 1000.0) + _uniform(gen, -100.0, 100.0)
        out.append(xi)
    return torch.cat(out)


def sample_patches(vol: torch.Tensor, ndim: int, batch: int, patch: int, gen: torch.Generator) -> torch.Tensor:
    """Random training patches ``(batch, 1, *[patch]*ndim)`` of ``vol`` avoiding the held-out slab.

    2-D patches are ``patch x patch`` crops of axial, coronal or sagittal slices.  Patches that are
    less than 30 % head are re-drawn (up to 50 times).
    """
    shape = vol.shape
    out = []
    for _ in range(batch):
        for _try in range(50):
            if ndim == 3:
                size = [patch] * 3
            else:
                size = [patch] * 3
                size[int(torch.randint(0, 3, (), generator=gen))] = 1
            start = []
            for ax in range(3):
                if ax == 1:  # keep the whole patch on one side of the held-out slab
                    lo_room = HOLDOUT_Y[0] - size[1]
                    hi_room = shape[1] - size[1] - HOLDOUT_Y[1]
                    choices = list(range(0, lo_room + 1)) + list(range(HOLDOUT_Y[1], HOLDOUT_Y[1] + hi_room + 1))
                    start.append(choices[int(torch.randint(0, len(choices), (), generator=gen))])
                else:
                    start.append(int(torch.randint(0, shape[ax] - size[ax] + 1, (), generator=gen)))
            p = vol[tuple(slice(s, s + n) for s, n in zip(start, size))]
            if (p > FOREGROUND).float().mean() > 0.3:
                break
        out.append(p.reshape([patch] * ndim))
    return torch.stack(out)[:, None]


def _grid(shape, device=None) -> torch.Tensor:
    axes = [torch.arange(n, device=device, dtype=torch.float32) for n in shape]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), 0).reshape(len(shape), -1)  # (nd, V)


def sampling_weights(x: torch.Tensor) -> torch.Tensor:
    """``(N, V)`` weights: head voxels, favouring edges; background almost never."""
    nd = x.dim() - 2
    grads = torch.gradient(x[:, 0], dim=tuple(range(1, nd + 1)))
    gm = torch.sqrt(sum(g**2 for g in grads)).flatten(1)
    gm = gm / gm.amax(1, keepdim=True).clamp_min(1e-6)
    head = (x[:, 0].flatten(1) > FOREGROUND).float()
    return head * (0.25 + gm) + 1e-3


def info_nce(
    f1: torch.Tensor,
    f2: torch.Tensor,
    weights: torch.Tensor,
    n_samples: int,
    gen: torch.Generator,
    tau: float = 0.1,
    min_dist: float = 4.0,
) -> torch.Tensor:
    """Symmetric voxel-level InfoNCE between two views ``f1``, ``f2`` ``(N, C, *spatial)``.

    ``n_samples`` voxels per item are drawn with ``weights`` ``(N, V)``; logits are cosine
    similarities / ``tau``; same-item pairs closer than ``min_dist`` voxels (other than the positive)
    are excluded from the negatives.
    """
    n, c = f1.shape[:2]
    shape = f1.shape[2:]
    coords = _grid(shape, f1.device)
    a_list, b_list, pos_list, item_list = [], [], [], []
    f1 = f1.flatten(2)
    f2 = f2.flatten(2)
    for i in range(n):
        idx = torch.multinomial(weights[i], n_samples, replacement=False, generator=gen)
        a_list.append(f1[i][:, idx].t())
        b_list.append(f2[i][:, idx].t())
        pos_list.append(coords[:, idx].t())
        item_list.append(torch.full((n_samples,), i))
    a = F.normalize(torch.cat(a_list), dim=1)
    b = F.normalize(torch.cat(b_list), dim=1)
    pos = torch.cat(pos_list)
    item = torch.cat(item_list)
    logits = a @ b.t() / tau
    near = (torch.cdist(pos, pos) < min_dist) & (item[:, None] == item[None, :])
    near.fill_diagonal_(False)
    logits = logits.masked_fill(near, float("-inf"))
    target = torch.arange(a.shape[0])
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))


# ---------------------------------------------------------------------------------------- training
def train(
    ndim: int,
    steps: int,
    out: str | os.PathLike,
    seed: int = 0,
    batch: int | None = None,
    patch: int | None = None,
    samples: int = 256,
    lr: float = 2e-3,
    tau: float = 0.1,
    log_every: int = 20,
    save_every: int = 200,
    max_minutes: float | None = None,
):
    """Pre-train a :class:`LocalEncoder` and write its checkpoint to ``out`` (also every ``save_every``).

    ``max_minutes`` is a wall-clock guard: training stops (and saves) early once it is exceeded.
    """
    from ..features.local import LocalEncoder

    batch = batch or (2 if ndim == 3 else 8)
    patch = patch or (32 if ndim == 3 else 48)
    torch.manual_seed(seed)
    np.random.seed(seed)
    gen = torch.Generator().manual_seed(seed)
    vol = load_mni_2mm()
    model = LocalEncoder(ndim=ndim, trainable=True)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    warmup = min(100, max(1, steps // 10))

    def lr_at(step: int) -> float:
        if step < warmup:
            return lr * (step + 1) / warmup
        t = (step - warmup) / max(1, steps - warmup)
        return lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * t)))

    args = dict(ndim=ndim, steps=steps, seed=seed, batch=batch, patch=patch, samples=samples, lr=lr, tau=tau,
                threads=torch.get_num_threads())
    print(f"pretrain_local: {json.dumps(args)} volume {tuple(vol.shape)}", flush=True)
    t0 = time.perf_counter()
    t_last = t0
    recent: list[float] = []
    history: list[tuple[int, float]] = []
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        x = sample_patches(vol, ndim, batch, patch, gen)
        views = torch.cat([random_contrast(x, gen), random_contrast(x, gen)])
        feats = model(views)
        loss = info_nce(feats[:batch], feats[batch:], sampling_weights(x), samples, gen, tau=tau)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        recent.append(float(loss.detach()))
        if (step + 1) % log_every == 0 or step + 1 == steps:
            now = time.perf_counter()
            mean_loss = sum(recent) / len(recent)
            history.append((step + 1, mean_loss))
            print(
                f"step {step + 1}/{steps} loss {mean_loss:.4f} lr {lr_at(step):.2e} "
                f"{len(recent) / (now - t_last):.2f} steps/s elapsed {now - t0:.0f}s",
                flush=True,
            )
            recent, t_last = [], now
        over_time = max_minutes is not None and time.perf_counter() - t0 > 60.0 * max_minutes
        if (step + 1) % save_every == 0 or step + 1 == steps or over_time:
            meta = dict(
                args, step=step + 1, wall_s=round(time.perf_counter() - t0, 1),
                final_loss=history[-1][1] if history else float(loss), loss_history=history,
                data="MNI ICBM152 2009a sym T1 (nilearn), 2 mm, held-out y rows %d-%d" % HOLDOUT_Y,
                torch=str(torch.__version__), machine=platform.machine(),
            )
            model.save(out, **meta)
        if over_time:
            print(f"stopping after {step + 1} steps: --max-minutes {max_minutes} reached", flush=True)
            steps = step + 1
            break
    print(f"done: {steps} steps in {time.perf_counter() - t0:.0f}s -> {out}", flush=True)
    return model


# ---------------------------------------------------------------------------------------- evaluation
@torch.no_grad()
def _invariance(extractor, x: torch.Tensor, n_contrasts: int, n_samples: int, gen: torch.Generator) -> dict:
    from ..features.base import instance_normalize

    same, diff, top1 = [], [], []
    nd = x.dim() - 2
    coords = _grid(x.shape[2:])
    for _ in range(n_contrasts):
        f1 = instance_normalize(extractor(random_contrast(x, gen)))
        f2 = instance_normalize(extractor(random_contrast(x, gen)))
        w = (x[:, 0].flatten(1) > FOREGROUND).float()
        for i in range(x.shape[0]):
            if w[i].sum() < n_samples:
                continue
            idx = torch.multinomial(w[i], n_samples, replacement=False, generator=gen)
            a = F.normalize(f1[i].flatten(1)[:, idx].t(), dim=1)
            b = F.normalize(f2[i].flatten(1)[:, idx].t(), dim=1)
            sim = a @ b.t()
            d = torch.cdist(coords[:, idx].t(), coords[:, idx].t())
            far = d >= 4.0
            same.append(sim.diagonal().mean())
            diff.append(sim[far].mean())
            masked = sim.masked_fill((~far) & ~torch.eye(n_samples, dtype=torch.bool), float("-inf"))
            top1.append((masked.argmax(1) == torch.arange(n_samples)).float().mean())
    del nd
    return dict(
        cos_same_voxel=round(float(torch.stack(same).mean()), 4),
        cos_other_voxels=round(float(torch.stack(diff).mean()), 4),
        top1_retrieval=round(float(torch.stack(top1).mean()), 4),
        chance=round(1.0 / n_samples, 4),
    )


def evaluate(checkpoint: str | os.PathLike, ndim: int, seed: int = 12345, n_contrasts: int = 8, n_samples: int = 1024) -> dict:
    """Contrast invariance on the held-out slab, for the checkpoint and two references.

    For pairs of unseen random contrasts of the held-out slab, with features standardised per
    channel: mean cosine similarity at the same voxel, mean cosine similarity between voxels >= 4
    apart, and top-1 retrieval accuracy (is the nearest feature among ``n_samples`` head voxels of
    the other contrast the same voxel?).  References: the same architecture with random weights
    and MIND-SSC.
    """
    from ..features import create_extractor
    from ..features.local import LocalEncoder

    vol = load_mni_2mm()
    slab = vol[:, HOLDOUT_Y[0] : HOLDOUT_Y[1], :]
    if ndim == 3:
        x = slab[None, None]
    else:  # coronal slices of the slab
        x = slab.permute(1, 0, 2)[:, None].contiguous()
    results = {}
    torch.manual_seed(0)
    candidates = {
        "local (pretrained)": lambda: LocalEncoder.load(checkpoint),
        "local (random init)": lambda: LocalEncoder(ndim=ndim),
        "mind": lambda: create_extractor("mind", ndim),
    }
    for name, make in candidates.items():
        try:
            ext = make()
        except Exception as exc:  # e.g. MIND not importable
            results[name] = f"unavailable: {exc}"
            continue
        results[name] = _invariance(ext, x, n_contrasts, n_samples, torch.Generator().manual_seed(seed))
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m unireg.training.pretrain_local", description=__doc__.split("\n\n")[0])
    p.add_argument("--ndim", type=int, choices=(2, 3), required=True)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--out", type=Path, help="checkpoint to write")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch", type=int, default=None, help="patches per step (default 2 in 3-D, 8 in 2-D)")
    p.add_argument("--patch", type=int, default=None, help="patch edge in voxels (default 32 in 3-D, 48 in 2-D)")
    p.add_argument("--samples", type=int, default=256, help="voxels sampled per patch for InfoNCE")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--max-minutes", type=float, default=None, help="stop (and save) after this wall time")
    p.add_argument("--evaluate", type=Path, default=None, help="evaluate this checkpoint instead of training")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    if a.evaluate is not None:
        print(json.dumps(evaluate(a.evaluate, a.ndim), indent=2))
        return 0
    if a.out is None:
        p.error("--out is required for training")
    train(a.ndim, a.steps, a.out, seed=a.seed, batch=a.batch, patch=a.patch, samples=a.samples, lr=a.lr,
          max_minutes=a.max_minutes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
