"""Batched attacks (adversary.attacks.batched): vmap over attacks equals running them one by one.

The reference for each attack is the engine's own path: ``ClientSimulator`` (autograd with
create_graph) + the registered ``cosine``/``l2`` objective + ``tv`` regularizer, on the model in
the matching BN mode. A small BatchNorm net keeps this fast on CPU.
"""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from adversary.attacks import AttackInputs, ClientSimulator, GradientInversion, ThreatModel
from adversary.attacks.batched import batched_attack_loss, batched_inversion, stack_observed
from adversary.attacks.objectives import OBJECTIVES
from adversary.attacks.regularizers import REGULARIZERS
from fl_sim.data import load_sample_images
from fl_sim.models import Normalize


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread: these tiny nets gain nothing from more, and two OpenMP threads on a
    busy 2-core machine ran the vmapped step up to 100x slower (spin-waiting). Restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def small_bn_net() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.MaxPool2d(2), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(64, 10),
    )  # fmt: skip
    model = nn.Sequential(OrderedDict(normalize=Normalize(3), net=net))
    with torch.no_grad():  # non-trivial running statistics, for bn_mode="eval"
        model.train()(torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(5)))
    return model


@pytest.fixture(scope="module")
def setup(one_thread):
    x, y = load_sample_images("cifar10-sample")
    model = small_bn_net()
    a, n = 3, 2
    xs, ys = x[: a * n].view(a, n, 3, 32, 32), y[: a * n].view(a, n)
    model.train()
    names, params = zip(*model.named_parameters())
    observed = []
    for i in range(a):
        grads = torch.autograd.grad(F.cross_entropy(model(xs[i]), ys[i]), params)
        observed.append({k: g.detach() for k, g in zip(names, grads)})
    return model, observed, xs, ys


def reference(model, observed, labels, images, objective, tv, bn_mode):
    """Each attack on its own through ClientSimulator + registered objective/regularizer."""
    obj_fn, tv_fn = OBJECTIVES.build(objective), REGULARIZERS.build("tv")
    was = model.training
    model.train(bn_mode == "train")
    totals, objs, grads = [], [], []
    try:
        for i, obs in enumerate(observed):
            sim = ClientSimulator(AttackInputs(model, obs, labels=labels[i]), ThreatModel(num_images=labels.shape[1]))
            xi = images[i].clone().requires_grad_(True)
            obj = obj_fn(sim(xi, labels[i]), obs)
            total = obj + tv * tv_fn(xi, None) if tv else obj
            grads.append(torch.autograd.grad(total, xi)[0])
            totals.append(total.detach())
            objs.append(obj.detach())
    finally:
        model.train(was)
    return torch.stack(totals), torch.stack(objs), torch.stack(grads)


@pytest.mark.parametrize(
    "objective,tv,bn_mode", [("cosine", 0.05, "train"), ("cosine", 0.0, "eval"), ("l2", 0.01, "train")]
)
def test_batched_loss_and_gradient_equal_per_attack(setup, objective, tv, bn_mode):
    model, observed, _, ys = setup
    images = torch.rand(len(observed), ys.shape[1], 3, 32, 32, generator=torch.Generator().manual_seed(1))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.eval()
    total, obj, grad = batched_attack_loss(model, observed, ys, images, objective=objective, tv=tv, bn_mode=bn_mode)
    # the caller's model is untouched: same mode, same running statistics
    assert not model.training and all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    ref_total, ref_obj, ref_grad = reference(model, observed, ys, images, objective, tv, bn_mode)
    assert total.shape == obj.shape == (3,) and grad.shape == images.shape
    torch.testing.assert_close(total, ref_total, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(obj, ref_obj, rtol=1e-5, atol=1e-5)
    scale = ref_grad.abs().amax(dim=(1, 2, 3, 4), keepdim=True)
    assert float(((grad - ref_grad).abs() / scale).max()) < 1e-5
    # a stacked dict is the same input as the list of dicts
    total2, _, grad2 = batched_attack_loss(model, stack_observed(observed, model), ys, images, objective=objective, tv=tv, bn_mode=bn_mode)
    torch.testing.assert_close(total2, total)
    torch.testing.assert_close(grad2, grad)


def test_batched_run_reduces_every_objective_and_matches_runner(setup):
    model, observed, xs, ys = setup
    curves: list[torch.Tensor] = []
    images = batched_inversion(model, observed, ys, 40, tv=0.01, seed=3, callback=lambda it, t, o: curves.append(o))
    assert images.shape == xs.shape and float(images.min()) >= 0.0 and float(images.max()) <= 1.0
    _, final, _ = batched_attack_loss(model, observed, ys, images, tv=0.01)
    assert len(curves) == 40 and bool((final < 0.8 * curves[0]).all()), (curves[0], final)

    # same start (seed + a), schedule and box as GradientInversion(restarts=1): a few steps agree
    short = batched_inversion(model, observed, ys, 5, tv=0.01, seed=3)
    for i, obs in enumerate(observed):
        attack = GradientInversion(objective="cosine", regularizers=[("tv", 0.01)], iterations=5, seed=3 + i)
        result = attack.run(AttackInputs(model, obs, labels=ys[i]), ThreatModel(labels="known", num_images=2))
        torch.testing.assert_close(short[i], result.images, rtol=0, atol=1e-4)


def test_bad_inputs_are_refused(setup):
    model, observed, _, ys = setup
    with pytest.raises(ValueError, match="labels"):
        batched_inversion(model, observed, ys[:2], 1)
    with pytest.raises(ValueError, match="bn_mode"):
        batched_inversion(model, observed, ys, 1, bn_mode="proxy")
    with pytest.raises(ValueError, match="none of the model"):
        batched_inversion(model, [{"nope": torch.zeros(1)}], ys[:1], 1)
