"""The faster attack iteration (#18) computes what the plain formulas compute, to float tolerance."""

from __future__ import annotations

import torch
from torch.nn import functional as F

from adversary.attacks import AttackInputs, ThreatModel
from adversary.attacks.objectives import OBJECTIVES
from adversary.attacks.simulate import ClientSimulator
from fl_sim.data import load_sample_images
from fl_sim.models import build_model


def _reference_cosine(sim: dict, obs: dict, weights: dict) -> torch.Tensor:
    """Geiping et al.'s cosine as written out: products summed per layer."""
    dot = sim_sq = obs_sq = 0.0
    for k, o in obs.items():
        w = weights.get(k, 1.0)
        dot = dot + w * (sim[k] * o).sum()
        sim_sq = sim_sq + w * sim[k].pow(2).sum()
        obs_sq = obs_sq + w * o.pow(2).sum()
    return 1 - dot / (torch.sqrt(sim_sq) * torch.sqrt(obs_sq) + 1e-12)


def test_the_cosine_objective_and_its_gradient_match_the_formula() -> None:
    gen = torch.Generator().manual_seed(0)
    shapes = {"conv.weight": (16, 3, 3, 3), "conv.bias": (16,), "fc.weight": (10, 64), "fc.bias": (10,)}
    obs = {k: torch.randn(s, generator=gen) for k, s in shapes.items()}
    for weights in ({}, {"fc.weight": 2.0, "conv.bias": 0.5}):
        sim = {k: (0.3 * obs[k] + torch.randn(s, generator=gen)).requires_grad_(True) for k, s in shapes.items()}
        ours = OBJECTIVES.build("cosine", layer_weights=weights)(sim, obs)
        ref = _reference_cosine(sim, obs, weights)
        assert torch.allclose(ours, ref, rtol=1e-5, atol=1e-6)
        for a, b in zip(torch.autograd.grad(ours, list(sim.values())), torch.autograd.grad(ref, list(sim.values()))):
            assert torch.allclose(a, b, rtol=1e-4, atol=1e-7)


def test_the_simulated_gradient_is_the_models_and_leaves_the_weights_alone() -> None:
    x, y = load_sample_images("cifar10-sample")
    torch.manual_seed(0)
    model = build_model("convnet", (3, 32, 32), 10, width=8).train()
    before = {k: v.clone() for k, v in model.state_dict().items() if "running" not in k and "num_batches" not in k}
    expected = torch.autograd.grad(F.cross_entropy(model(x[:2]), y[:2]), list(model.parameters()))
    observed = {n: g.detach() for (n, _), g in zip(model.named_parameters(), expected)}
    sim = ClientSimulator(AttackInputs(model, observed, labels=y[:2]), ThreatModel(labels="known", num_images=2))
    dummy = x[:2].clone().requires_grad_(True)
    first = sim(dummy, y[:2])
    again = sim(dummy, y[:2])
    for (name, _), g in zip(model.named_parameters(), expected):
        assert torch.allclose(first[name], g, rtol=1e-4, atol=1e-6) and torch.equal(first[name], again[name])
    torch.autograd.grad(sum(v.sum() for v in first.values()), dummy)  # differentiable in the images
    after = model.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())
    assert all(p.grad is None for p in model.parameters())
