"""How the dummy variables are updated: signed Adam with step decay (Geiping) or L-BFGS (DLG).

An optimizer gets the attack variables and a closure that zeroes their gradients, computes
the summed loss of all trials, fills ``.grad`` and returns the loss; it calls ``on_step``
after each iteration. ``bounds`` is the images' box in the units they are optimised in (the
data range, or its image in the model's normalised input space); an optimizer that boxes
projects onto it. ``independent_trials`` says whether trials stacked in one tensor stay
independent (element-wise Adam) or must run one by one (L-BFGS couples them via its line search).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from adversary.attacks.registry import component_registry
from adversary.attacks.threat_model import Component

OPTIMIZERS = component_registry("optimizer")

Closure = Callable[[], Tensor]
OnStep = Callable[[int, float], None]
Bounds = tuple[Tensor | float, Tensor | float]


class AttackOptimizer(Component):
    independent_trials = True

    def run(self, images: Tensor, extra: Sequence[Tensor], closure: Closure, iterations: int, on_step: OnStep,
            bounds: Bounds | None = None) -> None:
        raise NotImplementedError


def milestones(iterations: int, fractions: Sequence[float]) -> list[int]:
    return sorted({max(1, int(round(iterations * f))) for f in fractions})


@OPTIMIZERS.register("adam")
class Adam(AttackOptimizer):
    """Adam on sign(grad) (Geiping et al.), MultiStepLR x``gamma`` at 3/8, 5/8, 7/8, boxed (``box=None``: not).

    The sign makes progress independent of the gradient scale, which varies by orders of
    magnitude between objectives and models.
    """

    def __init__(
        self,
        lr: float = 0.1,
        signed: bool = True,
        decay: Sequence[float] = (3 / 8, 5 / 8, 7 / 8),
        gamma: float = 0.1,
        box: tuple[float, float] | None = (0.0, 1.0),
    ) -> None:
        self.lr, self.signed, self.decay, self.gamma, self.box = lr, signed, tuple(decay), gamma, box

    def run(self, images: Tensor, extra: Sequence[Tensor], closure: Closure, iterations: int, on_step: OnStep,
            bounds: Bounds | None = None) -> None:
        params = [images, *extra]
        lo, hi = (bounds if bounds is not None else self.box) if self.box is not None else (None, None)
        opt = torch.optim.Adam(params, lr=self.lr)
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones(iterations, self.decay), gamma=self.gamma)
        for it in range(iterations):
            loss = closure()
            if self.signed:
                for p in params:
                    if p.grad is not None:
                        p.grad.sign_()
            opt.step()
            sched.step()
            if lo is not None:
                with torch.no_grad():
                    images.clamp_(lo, hi)
            on_step(it, float(loss))


@OPTIMIZERS.register("adam-signed")
class SignedAdam(Adam):
    """Alias of ``adam`` (signed by default), the name the presets use."""


@OPTIMIZERS.register("lbfgs")
class LBFGS(AttackOptimizer):
    """L-BFGS with lr 1, as in DLG; no box during the run (it would break the curvature pairs)."""

    independent_trials = False

    def __init__(self, lr: float = 1.0, max_iter: int = 20, history_size: int = 100, line_search: str | None = "strong_wolfe") -> None:
        self.lr, self.max_iter, self.history_size, self.line_search = lr, max_iter, history_size, line_search

    def run(self, images: Tensor, extra: Sequence[Tensor], closure: Closure, iterations: int, on_step: OnStep,
            bounds: Bounds | None = None) -> None:
        opt = torch.optim.LBFGS(
            [images, *extra], lr=self.lr, max_iter=self.max_iter, history_size=self.history_size, line_search_fn=self.line_search
        )
        for it in range(iterations):
            loss = opt.step(closure)
            on_step(it, float(loss))
