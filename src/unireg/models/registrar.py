"""The registrar: a frozen feature extractor followed by the UNet deformation network.

Checkpoints carry their full configuration so that :func:`load_registrar` needs nothing else.
The frozen extractor is rebuilt by name (its weights ship separately and never change), so a
checkpoint stores only the UNet's parameters plus a fingerprint of the extractor it was trained on.
"""

from __future__ import annotations

import hashlib
import io
import os
from importlib import resources
from pathlib import Path

import torch
import torch.nn as nn

from ..errors import UniRegError
from ..features import create_extractor
from ..spatial.grid import resize_field, warp
from ..spatial.integrate import integrate_velocity
from .corrnet import CorrNet
from .unet import UNet

# deformation networks by ``unet["arch"]`` (checkpoints without it are the original UNet)
_ARCHS: dict[str, type[UNet] | type[CorrNet]] = {"unet": UNet, "corr": CorrNet}


def create_deformation_net(ndim: int, in_channels: int, **kwargs) -> UNet | CorrNet:
    arch = kwargs.pop("arch", "unet")
    if arch not in _ARCHS:
        raise UniRegError(f"unknown deformation network {arch!r}; available: {', '.join(sorted(_ARCHS))}")
    return _ARCHS[arch](ndim, in_channels, **kwargs)


__all__ = ["Registrar", "load_registrar", "default_model_path", "DEFAULT_WORKING"]

# Working grid defaults per dimensionality: isotropic spacing (mm) and the cap on the largest side.
DEFAULT_WORKING = {2: {"spacing": 1.0, "max_size": 256}, 3: {"spacing": 2.0, "max_size": 160}}


def _fingerprint(module: nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in sorted(module.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


class Registrar(nn.Module):
    """Frozen features + UNet -> stationary velocity field.

    Parameters
    ----------
    ndim : 2 or 3.
    extractor : registry name of the frozen feature extractor (``mind``, ``local``, ``imagenet``).
    extractor_kwargs : passed to :func:`unireg.features.create_extractor`.
    unet : keyword arguments of the deformation network: ``arch`` (``"unet"``, the default, or
        ``"corr"``) and the class's own (:class:`UNet`: ``enc``, ``dec``, ``cond_dim``;
        :class:`CorrNet`: ``width``, ``radius``, ``convs``, ``cond_dim``).
    int_steps : scaling-and-squaring steps.
    working : ``{"spacing": mm, "max_size": voxels}`` of the working grid.
    trained : whether the UNet carries trained weights (reported in report.json).
    """

    def __init__(
        self,
        ndim: int,
        extractor: str = "mind",
        extractor_kwargs: dict | None = None,
        unet: dict | None = None,
        int_steps: int = 7,
        working: dict | None = None,
        trained: bool = False,
        meta: dict | None = None,
    ):
        super().__init__()
        self.ndim = ndim
        self.extractor_name = extractor
        self.extractor_kwargs = dict(extractor_kwargs or {})
        self.features = create_extractor(extractor, ndim, **self.extractor_kwargs)
        unet = dict(unet or {})
        self.unet = create_deformation_net(ndim, self.features.out_channels, **unet)
        self.int_steps = int_steps
        self.working = dict(working or DEFAULT_WORKING[ndim])
        self.trained = trained
        self.meta = dict(meta or {})

    @property
    def config(self) -> dict:
        unet = {k: v for k, v in self.unet.config.items() if k not in ("ndim", "in_channels")}
        return dict(
            ndim=self.ndim,
            extractor=self.extractor_name,
            extractor_kwargs={k: v for k, v in self.extractor_kwargs.items() if k != "weights"},
            unet=unet,
            int_steps=self.int_steps,
            working=self.working,
            trained=self.trained,
            meta=self.meta,
        )

    def train(self, mode: bool = True):
        super().train(mode)
        self.features.eval()  # frozen for ever
        return self

    def extract(self, image: torch.Tensor) -> torch.Tensor:
        """Frozen features of ``(B, 1, *S)`` images."""
        return self.features(image)

    def forward(self, fixed_feat: torch.Tensor, moving_feat: torch.Tensor, smoothness: torch.Tensor | float = 1.0):
        """Velocity ``(B, ndim, *S_v)`` in voxels of its own (possibly coarser) grid."""
        if not torch.is_tensor(smoothness):
            smoothness = torch.full((fixed_feat.shape[0],), float(smoothness), device=fixed_feat.device)
        return self.unet(fixed_feat, moving_feat, smoothness)

    def predict(
        self,
        fixed_feat: torch.Tensor,
        moving_feat: torch.Tensor,
        smoothness: torch.Tensor | float = 1.0,
        passes: int = 1,
        symmetric: bool = False,
    ) -> torch.Tensor:
        """The network applied up to ``passes`` times as a recursive cascade (Zhao et al., ICCV 2019):
        each pass sees the moving features pulled through the velocity so far and predicts what is
        left, which is added to it (a first-order composition; the pipeline integrates the sum, so
        the map stays diffeomorphic).  A pass is kept only if it lowers the feature MSE of the pair
        (the similarity the network was trained on); the cascade stops at the first that does not.

        ``symmetric``: every pass's velocity is the mean of the network's estimate for (fixed, moving)
        and the negated estimate for (moving, fixed) -- the inverse of ``exp(v)`` is ``exp(-v)``, so
        both estimate the same map: an inverse-consistent two-member ensemble (two network evaluations a pass)."""

        def net(f: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
            v = self(f, m, smoothness)
            return 0.5 * (v - self(m, f, smoothness)) if symmetric else v

        v = net(fixed_feat, moving_feat)
        if int(passes) <= 1:
            return v
        shape = fixed_feat.shape[2:]
        moved = warp(moving_feat, self.displacement(v, shape), padding_mode="border")
        cost = (fixed_feat - moved).pow(2).mean()  # the feature MSE (unireg.losses.feature_mse)
        for _ in range(int(passes) - 1):
            v_next = v + net(fixed_feat, moved)
            moved_next = warp(moving_feat, self.displacement(v_next, shape), padding_mode="border")
            cost_next = (fixed_feat - moved_next).pow(2).mean()
            if not bool(cost_next < cost):
                break
            v, moved, cost = v_next, moved_next, cost_next
        return v

    def displacement(self, velocity: torch.Tensor, shape) -> torch.Tensor:
        """Integrate ``velocity`` and bring the displacement to ``shape`` (voxels of that grid)."""
        return resize_field(integrate_velocity(velocity, self.int_steps), shape)

    # --- checkpoints -------------------------------------------------------------------------
    def checkpoint(self, extra: dict | None = None) -> dict:
        return {
            "format": "unireg-registrar-1",
            "config": self.config,
            "extractor_fingerprint": _fingerprint(self.features),
            "state_dict": self.unet.state_dict(),
            "extra": dict(extra or {}),
        }

    def save(self, path: str | Path, extra: dict | None = None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        torch.save(self.checkpoint(extra), buf)
        tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
        tmp.write_bytes(buf.getvalue())
        os.replace(tmp, path)


def default_model_path(ndim: int) -> Path | None:
    """The shipped trained model for ``ndim``, or None when the package has none."""
    try:
        p = resources.files("unireg") / "weights" / f"unireg_{ndim}d.pt"
        return Path(str(p)) if p.is_file() else None
    except (FileNotFoundError, ModuleNotFoundError):
        return None


def load_registrar(path: str | os.PathLike, extractor_kwargs: dict | None = None, map_location="cpu") -> Registrar:
    """Load a registrar checkpoint written by :meth:`Registrar.save`."""
    path = Path(path)
    if not path.is_file():
        raise UniRegError("model checkpoint not found", path)
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as exc:  # corrupt or foreign file
        raise UniRegError(f"not a readable UniReg checkpoint ({type(exc).__name__})", path) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != "unireg-registrar-1":
        raise UniRegError("not a UniReg registrar checkpoint (missing format tag)", path)
    # A tagged but damaged checkpoint (missing/unknown config keys, UNet weights that do not fit the
    # config) raised KeyError/TypeError/RuntimeError with a traceback; report it as one user error.
    try:
        cfg = dict(ckpt["config"])
        kw = dict(cfg.pop("extractor_kwargs", {}))
        kw.update(extractor_kwargs or {})
        model = Registrar(extractor_kwargs=kw, **cfg)
    except UniRegError as exc:
        raise UniRegError(f"checkpoint config: {exc.message}", path) from None
    except (KeyError, TypeError, ValueError) as exc:
        raise UniRegError(f"damaged UniReg checkpoint (bad config: {type(exc).__name__}: {exc})", path) from None
    fp = _fingerprint(model.features)
    if ckpt.get("extractor_fingerprint") not in (None, fp):
        raise UniRegError(
            f"checkpoint was trained on a different '{cfg['extractor']}' extractor (fingerprint mismatch)", path
        )
    try:
        model.unet.load_state_dict(ckpt["state_dict"])
    except (KeyError, TypeError, RuntimeError) as exc:
        first = " ".join(ln.strip() for ln in str(exc).splitlines() if ln.strip())[:200] or type(exc).__name__
        raise UniRegError(f"damaged UniReg checkpoint (UNet weights do not fit its config: {first})", path) from None
    model.eval()
    return model
