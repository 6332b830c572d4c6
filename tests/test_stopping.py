"""Stopping rules (#18): an attack may stop on its own loss's plateau or a target; off, it runs the whole budget."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from adversary.attacks import AttackInputs, ConfigError, ThreatModel, build_attack, preset_config
from adversary.attacks.presets import PRESETS
from adversary.attacks.stopping import STOPPING_RULES
from fl_sim.data import load_sample_images
from fl_sim.models import build_model


def _feed(rule, curve: list[float]) -> int | None:
    """The 1-based iteration at which the rule stops on ``curve`` (None: never)."""
    rule.reset()
    return next((i + 1 for i, loss in enumerate(curve) if rule.reached(loss)), None)


def test_plateau_stops_a_window_after_the_loss_stops_improving() -> None:
    falling = [1.0 / (1 + i) for i in range(100)]  # improves by far more than 1% every 10 iterations
    flat = falling + [falling[-1]] * 50
    rule = STOPPING_RULES.build("plateau", window=10, rel_tol=0.01)
    assert _feed(rule, falling) is None
    assert _feed(rule, flat) == 110  # the first full window with no 1% gain
    noisy = falling + [falling[-1] * (1.2 if i % 2 else 1.001) for i in range(50)]
    assert _feed(rule, noisy) == 110  # noise above the best is no progress
    assert _feed(STOPPING_RULES.build("plateau", window=10, rel_tol=0.01, min_iterations=130), flat) == 130
    assert _feed(STOPPING_RULES.build("never"), flat) is None
    assert _feed(STOPPING_RULES.build("target", value=0.02), falling) == 50


def test_a_rule_is_fresh_for_each_curve() -> None:
    rule = STOPPING_RULES.build("plateau", window=5, rel_tol=0.0)
    assert _feed(rule, [1.0] * 20) == 6
    assert _feed(rule, [1.0 / (1 + i) for i in range(20)]) is None


@pytest.mark.parametrize(("stop", "error"), [
    ({"name": "plateau", "window": 0}, "window must be an integer >= 1"),
    ({"name": "plateau", "rel_tol": -1.0}, "rel_tol must be >= 0"),
    ({"name": "target"}, "value"),
    ({"name": "soon"}, "unknown stop 'soon'"),
    ({"name": "plateau", "patience": 3}, "unknown option 'patience'"),
])
def test_bad_rules_are_one_line(stop: dict, error: str) -> None:
    with pytest.raises((ConfigError, TypeError), match=error):
        build_attack("inverting-gradients", {"stop": stop})


def test_every_paper_preset_runs_its_whole_budget() -> None:
    for name in PRESETS:
        assert preset_config(name)["stop"] == {"name": "never"}, name
    assert preset_config({k: v for k, v in PRESETS["dlg"].items() if k != "stop"})["stop"] == {"name": "never"}


@pytest.fixture(scope="module")
def one_image() -> tuple[AttackInputs, ThreatModel]:
    x, y = load_sample_images("cifar10-sample")
    torch.manual_seed(0)
    model = build_model("convnet", (3, 32, 32), 10, width=8)
    model.train()
    names, params = zip(*model.named_parameters())
    grads = torch.autograd.grad(F.cross_entropy(model(x[:1]), y[:1]), params)
    return AttackInputs(model, {n: g.detach() for n, g in zip(names, grads)}, labels=y[:1]), ThreatModel(labels="known", num_images=1)


# TV on the normalised input: here the screen keeps a trial whose own loss lies above another's before the screen,
# so a rule fed the lowest loss of any trial would see a plateau the survivor never reached
INPUT_TV = {"regularizers": {"tv": {"weight": 0.025, "space": "input", "border": True}}, "prior_scales": [8.0, 1.0, 0.1]}


@pytest.mark.parametrize("over", [{}, INPUT_TV], ids=["default", "input-tv"])
def test_an_attack_stops_on_its_plateau_and_reports_the_iterations_it_used(one_image, over) -> None:
    inputs, tm = one_image
    steps: list[int] = []
    budget = 300
    stopped = build_attack("inverting-gradients", {**over, "iterations": budget,
                                                   "stop": {"name": "plateau", "window": 20, "rel_tol": 0.05}})
    result = stopped.run(inputs, tm, callback=lambda i, _loss: steps.append(i))
    used = result.timing["iterations_used"]
    assert result.timing["stopped_early"] and 20 < used < budget and len(result.loss_curve) == used == len(steps)
    curve = result.loss_curve
    assert min(curve[:-20]) - min(curve[-20:]) <= 0.05 * min(curve[:-20])  # it stopped on a real plateau
    assert result.config["stop"] == {"name": "plateau", "window": 20, "rel_tol": 0.05, "min_iterations": 0}
    # the same attack with the rule off: the whole budget, and the same first steps
    full = build_attack("inverting-gradients", {**over, "iterations": budget}).run(inputs, tm)
    assert full.timing["iterations_used"] == budget and not full.timing["stopped_early"]
    assert full.loss_curve[:used] == pytest.approx(curve, rel=1e-5)
