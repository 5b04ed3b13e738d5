"""A minimal Adam for test-time optimisation.

``torch.optim.Optimizer.__init__`` imports ``torch._dynamo`` (measured 1-8 s on the 2-core target
machine, more than a whole UniReg registration should take), so the few-parameter test-time loops
(affine, ``--refine``) use this 20-line Adam instead.  Training uses ``torch.optim.Adam``.
"""

from __future__ import annotations

import torch

__all__ = ["Adam"]


class Adam:
    """Adam (Kingma & Ba 2015) with the usual defaults; same update as ``torch.optim.Adam``."""

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8):
        self.params = [p for p in params]
        self.lr, self.b1, self.b2, self.eps = lr, betas[0], betas[1], eps
        self.m = [torch.zeros_like(p) for p in self.params]
        self.v = [torch.zeros_like(p) for p in self.params]
        self.t = 0

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self, alive: torch.Tensor | None = None) -> None:
        """One update.  ``alive``: a boolean scalar tensor; where it is False the parameters and the
        moments stay as they were (a device-side ``if``: a loop that would stop on a condition of its
        tensors need not read it back to the host each step).  The step count ``t`` advances either
        way: a caller that goes on after such steps sets it back to the steps taken."""
        self.t += 1
        c1 = 1 - self.b1**self.t
        c2 = 1 - self.b2**self.t
        for p, m, v in zip(self.params, self.m, self.v):
            if p.grad is None:
                continue
            g = p.grad
            if alive is None:
                m.mul_(self.b1).add_(g, alpha=1 - self.b1)
                v.mul_(self.b2).addcmul_(g, g, value=1 - self.b2)
                denom = (v / c2).sqrt_().add_(self.eps)
                p.addcdiv_(m, denom, value=-self.lr / c1)
                continue
            # the same arithmetic out of place, then kept only where alive (bit for bit the update above)
            m1 = m.mul(self.b1).add_(g, alpha=1 - self.b1)
            v1 = v.mul(self.b2).addcmul_(g, g, value=1 - self.b2)
            denom = (v1 / c2).sqrt_().add_(self.eps)
            p1 = torch.addcdiv(p, m1, denom, value=-self.lr / c1)
            for old, new in ((m, m1), (v, v1), (p, p1)):
                old.copy_(torch.where(alive, new, old))
