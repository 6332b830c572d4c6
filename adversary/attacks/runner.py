"""The optimisation-based attack: compose parts, run R restarts, keep the attack's own best.

Trials are stacked in one image tensor [R, N, C, H, W] and stepped together when the
optimizer treats elements independently (Adam); their gradients are computed trial by trial
(BatchNorm statistics must not mix trials, and on CPU a loop is faster than vmap, see
notes/stack.md). The best trial is the one with the lowest final attack loss: ground truth
is never consulted here.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from adversary.attacks.bn import BN_STRATEGIES
from adversary.attacks.labels import LABEL_STRATEGIES, LabelGuess
from adversary.attacks.objectives import OBJECTIVES
from adversary.attacks.optimizers import OPTIMIZERS
from adversary.attacks.registry import ConfigError, as_spec
from adversary.attacks.regularizers import REGULARIZERS, RegContext
from adversary.attacks.simulate import ClientSimulator
from adversary.attacks.stopping import STOPPING_RULES
from adversary.attacks.threat_model import AttackInputs, Component, check_grants
from fl_sim.models import input_statistics
from fl_sim.models.bn_stats import batch_statistics
from fl_sim.registry import Registry
from fl_sim.threat import Capability, ThreatModel, ThreatModelError

Callback = Callable[[int, float], None]


@dataclass(frozen=True)
class _Space:
    """The images' optimisation space: ``x = mean + std * z`` (``mean`` None: the data range itself), and the
    optimizer's box in the units of ``z``."""

    mean: Tensor | None
    std: Tensor | None
    bounds: tuple[Tensor, Tensor] | None

    def pixels(self, z: Tensor) -> Tensor:
        return z if self.mean is None else self.mean + self.std * z


class _Stop(Exception):
    """The stopping rule ended the optimisation after an iteration (the variables hold its step)."""
INITS = ("randn", "rand")
# Where the images are optimised: in the data range, or in the model's normalised input space, z = (x - mean) / std
# (Geiping et al.'s and breaching's choice: the start, the step and the box scale with each channel's std).
SPACES = ("pixel", "normalized")
# What a trial returns: its last iterate, or the iterate with the lowest attack loss it evaluated (the attack's own
# objective and regularizers: never the ground truth).
KEEPS = ("last", "best")
# How the chosen trial is picked among the restarts, by the attack's own figures: its loss (objective plus
# regularizers at the preset's weights), or log(objective) plus the regularizers, which compares objectives
# by their ratio. The objective's scale differs by orders of magnitude between models (a cosine distance of
# 0.002 on a ConvNet's gradient, 0.7 on an untrained ResNet-18's after the same iterations), so a difference
# that decides one model is noise on the other; a ratio means the same on both.
RANKS = ("loss", "log-objective")
# Screening (successive halving with one round): after this fraction of the budget every trial is ranked as above, at
# its kept iterate, and only the best goes on; the others stay where they were and still compete at the end. Trials
# of different priors separate early (a weak prior's objective falls by orders of magnitude within tens of
# iterations where the gradient pins the image), so R trials cost about 1 + (R - 1) * screen runs instead of R.


# Where no trial matched the update (each one's objective above ``unmatched``: for the cosine distance, the simulated
# update shares less than half its direction with the observed one at 0.5), the fit says nothing about which trial
# is nearer the images, and the prior decides: the trials of the strongest prior compete alone. Measured on an
# untrained ResNet-18 (README "How strong the default attack is"): its objectives stay at 0.72-0.79 whatever the
# prior, and the strongest prior's images were the nearest in every setting.


def check_unmatched(value: Any) -> None:
    """``unmatched``: None (the fit always ranks), or the objective above which no trial counts as matched."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0):
        raise ConfigError(f"unmatched: must be a number > 0 (or absent: the fit always ranks the trials), got {value!r}")


CHOICES: dict[str, tuple[str, ...]] = {"init": INITS, "space": SPACES, "keep": KEEPS, "rank": RANKS}


def check_choice(key: str, value: Any) -> None:
    """One of the attack's named choices (``CHOICES``), or a one-line ConfigError listing them."""
    if value not in CHOICES[key]:
        raise ConfigError(f"{key}: unknown choice {value!r}; choose one of: {', '.join(CHOICES[key])}")


def check_screen(value: Any) -> None:
    """``screen``: the fraction of the budget after which only the best-ranked trial goes on (0: every trial runs it all)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise ConfigError(f"screen: must be a number in [0, 1) (0: no screening), got {value!r}")


def check_prior_scales(value: Any) -> None:
    """``prior_scales``: trial i's regularizer weights are the preset's times ``value[i % len(value)]``."""
    if (not isinstance(value, (list, tuple)) or not value
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in value)):
        raise ConfigError(f"prior_scales: must be a non-empty list of numbers > 0, got {value!r}")


@dataclass
class AttackResult:
    """What an attack returns; ``images`` [N, C, H, W] in the data range, from the chosen trial."""

    images: Tensor
    labels: Tensor
    loss_curve: list[float]
    trial_losses: list[float]
    trial_objectives: list[float]
    best_trial: int
    timing: dict[str, float]
    config: dict[str, Any]
    all_images: Tensor | None = None  # [R, N, C, H, W]
    trial_curves: list[list[float]] = field(default_factory=list)

    @property
    def objective(self) -> float:
        """Final gradient-matching objective (without regularizers) of the chosen trial."""
        return self.trial_objectives[self.best_trial]


def _build(registry: Registry, spec: Any) -> Component:
    spec = as_spec(spec)
    if isinstance(spec, Component):
        return spec
    name, opts = spec
    return registry.build(name, **opts)


class GradientInversion(Component):
    """Gradient inversion = objective + weighted regularizers + optimizer + label and BN strategies."""

    kind = "attack"
    name = "gradient-inversion"
    requires = frozenset({Capability.NUM_IMAGES})

    def __init__(
        self,
        objective: Any = "cosine",
        regularizers: Sequence[tuple] = (),
        optimizer: Any = "adam-signed",
        label_strategy: Any = "known",
        bn_strategy: Any = "none",
        iterations: int = 1000,
        restarts: int = 1,
        init: str = "randn",
        seed: int = 0,
        adam_smoothing: float = 0.0,
        stop: Any = "never",
        space: str = "pixel",
        keep: str = "last",
        prior_scales: Sequence[float] = (1.0,),
        rank: str = "loss",
        screen: float = 0.0,
        unmatched: float | None = None,
    ) -> None:
        for key, value in (("init", init), ("space", space), ("keep", keep), ("rank", rank)):
            check_choice(key, value)
        check_prior_scales(prior_scales)
        check_screen(screen)
        check_unmatched(unmatched)
        if not adam_smoothing >= 0:
            raise ConfigError(f"adam_smoothing must be >= 0 (0: the client's exact Adam step), got {adam_smoothing}")
        if iterations < 1 or restarts < 1:
            raise ConfigError(f"iterations and restarts must be >= 1, got {iterations} and {restarts}")
        self.objective = _build(OBJECTIVES, objective)
        self.regularizers: list[tuple[str, float, Component]] = []
        for entry in regularizers:
            name, weight, *rest = entry
            comp = REGULARIZERS.build(name, **(rest[0] if rest else {}))
            self.regularizers.append((name, float(weight), comp))
        self.optimizer = _build(OPTIMIZERS, optimizer)
        self.label_strategy = _build(LABEL_STRATEGIES, label_strategy)
        self.bn_strategy = _build(BN_STRATEGIES, bn_strategy)
        self.stop = _build(STOPPING_RULES, stop)
        self.iterations, self.restarts, self.init, self.seed = iterations, restarts, init, seed
        self.adam_smoothing = float(adam_smoothing)
        self.space, self.keep = space, keep
        self.prior_scales = [float(v) for v in prior_scales]
        self.rank = rank
        self.screen = float(screen)
        self.unmatched = None if unmatched is None else float(unmatched)
        if self.screen and not getattr(self.optimizer, "independent_trials", True):
            raise ConfigError(f"screen: needs an optimizer that steps the trials together (adam); "
                              f"{self.optimizer.name!r} runs them one after another, so set screen = 0")

    def components(self) -> list[Component]:
        return [self, self.objective, *(c for _, _, c in self.regularizers), self.optimizer, self.label_strategy, self.bn_strategy,
                self.stop]

    def config(self) -> dict[str, Any]:
        return {
            "objective": self.objective.config(),
            "regularizers": [{"weight": w, **c.config()} for _, w, c in self.regularizers],
            "optimizer": self.optimizer.config(),
            "labels": self.label_strategy.config(),
            "bn": self.bn_strategy.config(),
            "stop": self.stop.config(),
            "iterations": self.iterations,
            "restarts": self.restarts,
            "init": self.init,
            "seed": self.seed,
            "adam_smoothing": self.adam_smoothing,
            "space": self.space,
            "keep": self.keep,
            "prior_scales": self.prior_scales,
            "rank": self.rank,
            "screen": self.screen,
            "unmatched": self.unmatched,
        }

    # ------------------------------------------------------------------ setup

    def check(self, inputs: AttackInputs, threat_model: ThreatModel) -> ClientSimulator:
        """Validate grants and BN targets before anything runs; returns the client simulator."""
        sim = ClientSimulator(inputs, threat_model, self.adam_smoothing)
        check_grants([*self.components(), sim], threat_model, inputs)
        if threat_model.num_images is not None:
            self.label_strategy.check(int(threat_model.num_images), inputs.num_classes)
        for _, _, reg in self.regularizers:
            if reg.name == "bn_prior" and getattr(reg, "source", None) is None:
                if self.bn_strategy.target(inputs, threat_model) is None:
                    raise ThreatModelError(
                        f"regularizer 'bn_prior' needs BatchNorm targets but bn strategy {self.bn_strategy.name!r} "
                        "provides none; use bn strategy exact, proxy or infer"
                    )
        return sim

    def _init_images(self, shape: tuple[int, ...], gen: torch.Generator) -> Tensor:
        return torch.randn(shape, generator=gen) if self.init == "randn" else torch.rand(shape, generator=gen)

    # ------------------------------------------------------------------ run

    def run(self, inputs: AttackInputs, threat_model: ThreatModel, callback: Callback | None = None) -> AttackResult:
        start = time.perf_counter()
        sim = self.check(inputs, threat_model)
        n, r = int(threat_model.num_images), self.restarts  # type: ignore[arg-type]
        gen = torch.Generator().manual_seed(self.seed)
        model = inputs.model
        was_training = model.training
        model.train(self.bn_strategy.mode == "train")
        try:
            guess = self.label_strategy.infer(inputs, threat_model, n, r, gen)
            targets = {
                "exact": inputs.bn_exact,
                "proxy": inputs.bn_proxy,
                "infer": BN_STRATEGIES.build("infer").target(inputs, threat_model),
            }
            device = next(model.parameters()).device
            ctx_base = RegContext(bn_target=self.bn_strategy.target(inputs, threat_model), bn_targets=targets,
                                  sign_center=inputs.sign_center,
                                  input_stats=tuple(t.to(device) for t in input_statistics(model, inputs.image_shape[0])))
            observed = {k: v.detach() for k, v in inputs.observed_delta().items() if k in sim.names}
            # Random starts are drawn on the CPU (same seed, same start on any device), then
            # moved to the model's device, as are inferred labels.
            space = self._space(model, inputs.image_shape[0], device)
            x = self._init_images((r, n, *inputs.image_shape), gen).to(device)  # in the space optimised in
            if guess.labels is not None:
                guess = LabelGuess(labels=guess.labels.to(device), logits=guess.logits)
            logits = guess.logits.clone().to(device) if guess.trainable else None
            groups = [list(range(r))] if getattr(self.optimizer, "independent_trials", True) else [[i] for i in range(r)]
            curves: list[list[float]] = [[] for _ in range(r)]
            spent = [0]
            used = [self._optimise(sim, observed, guess, ctx_base, x, logits, group, curves, gi, callback, space, spent)
                    for gi, group in enumerate(groups)]
            lo, hi = inputs.data_range
            x = space.pixels(x).clamp(lo, hi)
            finals = [self._trial_loss(sim, observed, guess, ctx_base, x[i], logits, i, None, create_graph=False) for i in range(r)]
        finally:
            model.train(was_training)
        totals = [float(t) for t, _ in finals]
        objectives = [float(o) for _, o in finals]
        best = self._pick(list(zip(totals, objectives)), [self._prior_scale(i) for i in range(r)])
        labels = guess.labels if not guess.trainable else logits[best].argmax(-1)  # type: ignore[index]
        elapsed = time.perf_counter() - start
        return AttackResult(
            images=x[best].detach().clone(),
            labels=labels.detach().clone(),
            loss_curve=curves[best],
            trial_losses=totals,
            trial_objectives=objectives,
            best_trial=best,
            timing={"total_s": elapsed, "per_iteration_s": elapsed / sum(used), "iterations": self.iterations,
                    "iterations_used": max(used), "stopped_early": max(used) < self.iterations,
                    "trial_iterations": spent[0]},
            config=self.config(),
            all_images=x.detach().clone(),
            trial_curves=curves,
        )

    def _labels_for(self, guess: LabelGuess, logits: Tensor | None, i: int) -> Tensor:
        return torch.softmax(logits[i], dim=-1) if logits is not None else guess.labels  # type: ignore[index,return-value]

    def _space(self, model: torch.nn.Module, channels: int, device: torch.device) -> _Space:
        if self.space == "pixel":
            return _Space(None, None, None)
        mean, std = (t.to(device) for t in input_statistics(model, channels))
        box = getattr(self.optimizer, "box", None)
        bounds = None if box is None else ((box[0] - mean) / std, (box[1] - mean) / std)
        return _Space(mean, std, bounds)

    def _score(self, total: float, objective: float) -> float:
        """A trial's rank (lower is better; NaN last)."""
        if self.rank == "log-objective":
            total = math.log(max(objective, 1e-12)) + (total - objective)
        return total if total == total else float("inf")

    def _pick(self, figures: Sequence[tuple[float, float]], scales: Sequence[float]) -> int:
        """The trial kept, from each trial's (loss, objective) and prior scale: the best-ranked, among the trials of
        the strongest prior alone where none matched the update (``unmatched``)."""
        candidates = list(range(len(figures)))
        if self.unmatched is not None and all(not objective <= self.unmatched for _, objective in figures):
            strongest = max(scales)
            candidates = [i for i in candidates if scales[i] == strongest]
        return min(candidates, key=lambda i: self._score(*figures[i]))

    def _prior_scale(self, trial: int) -> float:
        return self.prior_scales[trial % len(self.prior_scales)]

    def _trial_loss(self, sim, observed, guess, ctx_base, xi, logits, i, group_mean, create_graph=True,
                    scale: float = 1.0) -> tuple[Tensor, Tensor]:
        """Trial ``i``'s attack loss and objective at the images ``xi`` (in the data range), its regularizers'
        weights times ``scale``: its own prior while it is optimised; trials are ranked at scale 1, the
        preset's weights, so that trials of different priors are compared by one criterion."""
        with torch.enable_grad(), batch_statistics(sim.model, detach=False) as layers:
            simulated = sim(xi, self._labels_for(guess, logits, i), create_graph=create_graph)
            obj = self.objective(simulated, observed)
            feats = [(m, v) for _, m, v in layers]
            nbn = len(ctx_base.bn_target or feats)
            ctx = RegContext(bn_features=feats[: max(nbn, 0)], bn_target=ctx_base.bn_target, bn_targets=ctx_base.bn_targets,
                             group_mean=group_mean, sign_center=ctx_base.sign_center, input_stats=ctx_base.input_stats)
            total = obj
            for _, weight, reg in self.regularizers:
                if weight != 0.0:
                    total = total + scale * weight * reg(xi, ctx)
        if not create_graph:
            return total.detach(), obj.detach()
        return total, obj

    def _optimise(self, sim, observed, guess, ctx_base, x, logits, group, curves, gi, callback, space, spent) -> int:
        """Optimise one group of trials in place; returns the iterations it ran (the stopping rule may end it early).
        ``spent[0]`` counts the trial-iterations computed (a screened-out trial computes no more)."""
        xg = x[group].clone().requires_grad_(True)
        lg = logits[group].clone().requires_grad_(True) if logits is not None else None
        variables = [xg] + ([lg] if lg is not None else [])
        last: list[float] = [0.0] * len(group)
        best_loss = [float("inf")] * len(group)
        best: list[tuple[Tensor, Tensor | None] | None] = [None] * len(group)
        frozen: dict[int, tuple[Tensor, Tensor | None]] = {}  # screened-out trials (images, logits), held where they were
        screen_at = max(1, round(self.screen * self.iterations)) if self.screen and len(group) > 1 else None

        def closure() -> Tensor:
            group_mean = space.pixels(xg.detach()).mean(0) if len(group) > 1 else None
            grads = [torch.zeros_like(v) for v in variables]
            total = 0.0
            for j in range(len(group)):
                if j in frozen:
                    continue
                loss, _ = self._trial_loss(sim, observed, guess, ctx_base, space.pixels(xg[j]), lg, j, group_mean,
                                           scale=self._prior_scale(group[j]))
                for acc, g in zip(grads, torch.autograd.grad(loss, variables, allow_unused=True)):
                    if g is not None:
                        acc += g
                last[j] = float(loss.detach())
                total += last[j]
                if self.keep == "best" and last[j] < best_loss[j]:  # the point just evaluated, before the step moves it
                    best_loss[j] = last[j]
                    best[j] = (xg[j].detach().clone(), lg[j].detach().clone() if lg is not None else None)
            for v, g in zip(variables, grads):
                v.grad = g
            return torch.tensor(total)

        ran = [0]

        def screen_out() -> int:
            """Rank the trials at their kept iterates, at the preset's weights, and freeze all but the best (returned)."""
            kept = [best[j][0] if self.keep == "best" and best[j] is not None else xg[j].detach() for j in range(len(group))]
            images = space.pixels(torch.stack(kept))
            group_mean = images.mean(0)  # screening runs only where the group holds several trials
            figures = [tuple(float(t) for t in self._trial_loss(sim, observed, guess, ctx_base, images[j], lg, j, group_mean,
                                                                create_graph=False)) for j in range(len(group))]
            winner = self._pick(figures, [self._prior_scale(t) for t in group])
            for j in range(len(group)):
                if j != winner:
                    frozen[j] = (xg[j].detach().clone(), lg[j].detach().clone() if lg is not None else None)
            return winner

        def on_step(it: int, _loss: float) -> None:
            for j, t in enumerate(group):
                if j not in frozen:
                    curves[t].append(last[j])
                    spent[0] += 1
            with torch.no_grad():
                for j, (images, trial_logits) in frozen.items():  # Adam's momentum would move them on
                    xg[j] = images
                    if lg is not None:
                        lg[j] = trial_logits
            ran[0] = it + 1
            if it + 1 == screen_at:
                # From here one trial runs on, and the stopping rule judges its curve alone: before the screen it saw
                # the lowest loss of any trial, each at its own prior, which the survivor's need not continue.
                survivor = group[screen_out()]
                self.stop.reset()
                for value in curves[survivor][:-1]:  # this iteration's loss is judged below, as every iteration's
                    self.stop.reached(value)
            running = min(last[j] for j in range(len(group)) if j not in frozen)
            if callback is not None:
                callback(gi * self.iterations + it, running)
            if self.stop.reached(running):
                raise _Stop

        self.stop.reset()
        try:
            self.optimizer.run(xg, variables[1:], closure, self.iterations, on_step, bounds=space.bounds)
        except _Stop:
            pass
        if self.keep == "best":  # the last step's result was never evaluated: it competes too
            images = space.pixels(xg.detach())
            group_mean = images.mean(0) if len(group) > 1 else None
            for j in range(len(group)):
                final, _ = self._trial_loss(sim, observed, guess, ctx_base, images[j], lg, j, group_mean, create_graph=False,
                                            scale=self._prior_scale(group[j]))
                if float(final) < best_loss[j]:
                    best[j] = None
        with torch.no_grad():
            for j, kept in enumerate(best):
                if kept is not None:
                    xg[j] = kept[0]
                    if lg is not None:
                        lg[j] = kept[1]
            x[group] = xg.detach()
            if logits is not None:
                logits[group] = lg.detach()  # type: ignore[union-attr]
        return ran[0]
