"""When an attack may stop before its iteration budget: a rule on the attack's own loss, never the ground truth.

Presets with 4,800-10,000 iterations spend most of them on an attack that has long converged. A
stopping rule is told the loss of the best trial after each iteration (the loss the optimizer
minimises, regularizers included) and says whether to stop; ``reset`` starts a new curve. ``never`` is the default
and every paper preset's, so their budgets stay reproducible.
"""

from __future__ import annotations

from collections import deque

from adversary.attacks.registry import ConfigError, component_registry
from adversary.attacks.threat_model import Component

STOPPING_RULES = component_registry("stop")


class StoppingRule(Component):
    kind = "stop"

    def reset(self) -> None:
        """A new loss curve begins (the next group of trials)."""

    def reached(self, loss: float) -> bool:
        """Whether to stop now that this iteration's loss is ``loss``."""
        raise NotImplementedError


@STOPPING_RULES.register("never")
class Never(StoppingRule):
    """Run the whole budget."""

    def reached(self, loss: float) -> bool:
        return False


@STOPPING_RULES.register("plateau")
class Plateau(StoppingRule):
    """Stop when the best loss of the last ``window`` iterations is no better than the best before
    them by more than ``rel_tol`` of its size (and at least ``min_iterations`` have run)."""

    def __init__(self, window: int = 500, rel_tol: float = 1e-3, min_iterations: int = 0) -> None:
        if not isinstance(window, int) or isinstance(window, bool) or window < 1:
            raise ConfigError(f"stop plateau: window must be an integer >= 1, got {window!r}")
        if not rel_tol >= 0:
            raise ConfigError(f"stop plateau: rel_tol must be >= 0, got {rel_tol!r}")
        if not isinstance(min_iterations, int) or min_iterations < 0:
            raise ConfigError(f"stop plateau: min_iterations must be an integer >= 0, got {min_iterations!r}")
        self.window, self.rel_tol, self.min_iterations = window, float(rel_tol), min_iterations
        self.reset()

    def reset(self) -> None:
        self._seen = 0
        self._best_before = float("inf")  # the best loss before the last ``window`` iterations
        self._recent: deque[float] = deque()  # the last ``window`` losses
        self._minima: deque[float] = deque()  # their running minima, non-decreasing (front: the window's best)

    def reached(self, loss: float) -> bool:
        self._seen += 1
        self._recent.append(loss)
        while self._minima and self._minima[-1] > loss:
            self._minima.pop()
        self._minima.append(loss)
        if len(self._recent) > self.window:
            left = self._recent.popleft()
            self._best_before = min(self._best_before, left)
            if self._minima[0] == left:
                self._minima.popleft()
        if self._seen <= self.window or self._seen < self.min_iterations or self._best_before != self._best_before:
            return False
        return self._best_before - self._minima[0] <= self.rel_tol * abs(self._best_before)


@STOPPING_RULES.register("target")
class Target(StoppingRule):
    """Stop once the loss is at or below ``value``."""

    def __init__(self, value: float) -> None:
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value != value:
            raise ConfigError(f"stop target: value must be a number, got {value!r}")
        self.value = float(value)

    def reached(self, loss: float) -> bool:
        return loss <= self.value
