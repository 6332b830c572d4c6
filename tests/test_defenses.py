"""Client-side defenses: GradPrune, MixUp, InstaHide (intra/inter), DP-SGD; config and end to end."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from flwr.app import RecordDict
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from adversary.traffic_log import TrafficLog
from app.simulation import run_simulation, validate
from clients.defenses import BuildContext, EncodeContext, RoundContext, build_defenses, generator_for
from clients.defenses.dp import DP, DPParams, clip_and_sum, per_example_gradients
from clients.defenses.gradprune import GradPruneParams, num_pruned, prune
from clients.defenses.instahide import InstaHide, InstaHideParams
from clients.defenses.mixup import MixUp, MixUpParams, mix
from clients.training import gradient_step
from fl_sim.config import ConfigError, load_config
from fl_sim.ground_truth import GroundTruth
from fl_sim.task import load_task

# --- GradPrune ---------------------------------------------------------------------------------

PAPER_P = [0.5, 0.7, 0.9, 0.95, 0.99, 0.999]


@settings(max_examples=60, deadline=None)
@given(
    shapes=st.lists(st.lists(st.integers(1, 9), min_size=1, max_size=4), min_size=1, max_size=4),
    p=st.one_of(st.sampled_from(PAPER_P), st.floats(0.001, 0.999)),
    seed=st.integers(0, 2**31 - 1),
)
def test_gradprune_zeroes_exactly_the_requested_fraction_per_tensor(shapes, p, seed) -> None:
    g = torch.Generator().manual_seed(seed)
    update = {f"t{i}": torch.randn(*s, generator=g) + 1e-3 for i, s in enumerate(shapes)}  # no zeros (a.s.)
    update["counter"] = torch.tensor(5)  # non-float: passes through
    out = prune(update, p)
    assert torch.equal(out["counter"], update["counter"])
    for k, t in update.items():
        if k == "counter":
            continue
        n = t.numel()
        zeros = int((out[k] == 0).sum())
        assert zeros == num_pruned(p, n) == min(n, math.ceil(round(p * n, 6)))
        assert zeros >= p * n - 1e-9 and zeros < p * n + 1  # at least p, by less than one entry
        kept = out[k] != 0
        assert torch.equal(out[k][kept], t[kept])  # survivors unchanged
        if 0 < zeros < n:
            assert t[kept].abs().min() >= t[~kept].abs().max()  # the smallest magnitudes went


@settings(max_examples=25, deadline=None)
@given(sizes=st.lists(st.integers(1, 300), min_size=1, max_size=5), p=st.sampled_from(PAPER_P), seed=st.integers(0, 1000))
def test_gradprune_global_scope(sizes, p, seed) -> None:
    g = torch.Generator().manual_seed(seed)
    update = {f"t{i}": torch.randn(n, generator=g) * (i + 1) for i, n in enumerate(sizes)}
    out = prune(update, p, scope="global")
    total = sum(sizes)
    assert sum(int((v == 0).sum()) for v in out.values()) == num_pruned(p, total)
    flat_in = torch.cat(list(update.values()))
    flat_out = torch.cat(list(out.values()))
    kept = flat_out != 0
    assert torch.equal(flat_out[kept], flat_in[kept])
    if kept.any() and (~kept).any():
        assert flat_in[kept].abs().min() >= flat_in[~kept].abs().max()


def test_num_pruned_is_robust_to_float_error() -> None:
    assert num_pruned(0.7, 10) == 7  # 0.7 * 10 = 7.000000000000001 in binary floats
    assert num_pruned(0.9, 8) == 8 and num_pruned(0.9, 10) == 9 and num_pruned(0.999, 1000) == 999


# --- MixUp / InstaHide ---------------------------------------------------------------------------

def _private(n: int = 60, shape=(1, 6, 6), classes: int = 5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, *shape, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    pool = np.arange(10, 50)  # the client's partition
    return x, y, pool, classes


def _encode_ctx(x, y, pool, classes, batch_idx):
    return EncodeContext(indices=batch_idx, pool=pool, train_x=x, train_y=y, num_classes=classes)


@pytest.mark.parametrize("k", [2, 4, 6])
def test_mixup_coefficients_partners_images_and_labels(k: int) -> None:
    x, y, pool, classes = _private()
    idx = pool[:16]
    enc = MixUp(MixUpParams(k=k))
    rng = generator_for(0, 1, 0, 0)
    yo = torch.nn.functional.one_hot(y[idx], classes).float()
    mixed, labels, keys = enc.encode(x[idx], yo, rng, _encode_ctx(x, y, pool, classes, idx))
    partners, coeffs = keys["keys/partners"], torch.from_numpy(keys["keys/coeffs"])
    assert partners.shape == (16, k) and coeffs.shape == (16, k)
    torch.testing.assert_close(coeffs.double().sum(1), torch.ones(16, dtype=torch.float64), atol=1e-6, rtol=0)
    assert float(coeffs.max()) <= 0.65 and float(coeffs.min()) >= 0
    assert (partners[:, 0] == idx).all()
    assert np.isin(partners, pool).all()
    assert all(len(set(row)) == k for row in partners)  # distinct, never the image itself
    expected = (coeffs.view(16, k, 1, 1, 1) * x[torch.from_numpy(partners)]).sum(1)
    torch.testing.assert_close(mixed, expected, atol=1e-6, rtol=1e-6)
    onehots = torch.nn.functional.one_hot(y[torch.from_numpy(partners)], classes).float()
    torch.testing.assert_close(labels, (coeffs.view(16, k, 1) * onehots).sum(1), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(labels.sum(1), torch.ones(16), atol=1e-5, rtol=0)


def test_mixup_bound_holds_over_many_draws() -> None:
    from clients.defenses.mixup import sample_coefficients

    lam = sample_coefficients(5000, 4, 0.65, torch.Generator().manual_seed(1))
    assert lam.shape == (5000, 4) and float(lam.max()) <= 0.65
    torch.testing.assert_close(lam.sum(1), torch.ones(5000, dtype=torch.float64))
    assert float(lam.max()) > 0.6  # the bound is active, not a degenerate sampler


def test_intra_instahide_signs_are_fresh_and_abs_is_the_mix() -> None:
    x, y, pool, classes = _private()
    idx = pool[:12]
    enc = InstaHide(InstaHideParams(k=4, center="half"))
    rng = generator_for(0, 1, 0, 0)
    yo = torch.nn.functional.one_hot(y[idx], classes).float()
    ctx = _encode_ctx(x, y, pool, classes, idx)
    out1, labels1, keys1 = enc.encode(x[idx], yo, rng, ctx)
    out2, _, keys2 = enc.encode(x[idx], yo, rng, ctx)  # the next step
    for out, keys in ((out1, keys1), (out2, keys2)):
        signs = torch.from_numpy(keys["keys/signs"])
        assert signs.dtype == torch.int8 and signs.shape == out.shape
        assert set(signs.unique().tolist()) == {-1, 1}
        mixed = mix(x[torch.from_numpy(keys["keys/partners"])], torch.from_numpy(keys["keys/coeffs"]))
        torch.testing.assert_close((out - 0.5).abs(), (mixed - 0.5).abs(), atol=1e-6, rtol=1e-6)  # signs flip around 0.5
        torch.testing.assert_close(out, 0.5 + signs.float() * (mixed - 0.5))
        flat = signs.view(len(signs), -1)
        assert len({tuple(r.tolist()) for r in flat}) == len(flat)  # different per image
    assert not torch.equal(torch.from_numpy(keys1["keys/signs"]), torch.from_numpy(keys2["keys/signs"]))  # and per step
    coeffs = torch.from_numpy(keys1["keys/coeffs"])
    assert float(coeffs.max()) <= 0.65
    torch.testing.assert_close(labels1.sum(1), torch.ones(12), atol=1e-5, rtol=0)


def _build_ctx(cfg, key="defenses[0]"):
    task = load_task(cfg)
    return BuildContext(cfg, task.dataset.input_shape, task.dataset.num_classes, task.new_model(), key), task


def test_inter_instahide_draws_partners_from_the_public_set(tiny) -> None:
    cfg = tiny('defenses=[{name="instahide", k=4, variant="inter", public="mnist-sample"}]')
    ctx, task = _build_ctx(cfg)
    enc = InstaHide(cfg.defenses[0], ctx)
    from fl_sim.data import load_dataset

    public = load_dataset("mnist-sample")
    public_x = torch.cat([public.train_x, public.test_x])
    assert torch.equal(enc.public_x, public_x)
    part = task.partitions[0]
    idx = part[:8]
    x, y = task.dataset.train_x, task.dataset.train_y
    yo = torch.nn.functional.one_hot(y[idx], 10).float()
    out, labels, keys = enc.encode(x[idx], yo, generator_for(0, 1, 0, 0), _encode_ctx(x, y, part, 10, idx))
    partners, coeffs = keys["keys/partners"], torch.from_numpy(keys["keys/coeffs"])
    assert (partners[:, 0] == idx).all() and (partners[:, 1:] < len(public_x)).all()
    images = torch.cat([x[idx][:, None], public_x[torch.from_numpy(partners[:, 1:])]], dim=1)
    c = torch.tensor(task.dataset.mean).view(1, -1, 1, 1)  # default centre: the dataset mean (the model's Normalize)
    torch.testing.assert_close((out - c).abs(), (mix(images, coeffs) - c).abs(), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(labels, coeffs[:, :1] * yo)  # only the private label counts


def test_inter_instahide_public_shape_mismatch_is_one_line(tiny) -> None:
    cfg = tiny('defenses=[{name="instahide", k=4, variant="inter"}]')  # cifar100-sample vs 1x28x28
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    msg = str(err.value)
    assert msg.startswith("defenses[0].public:") and "(3, 32, 32)" in msg and "\n" not in msg


# --- DP-SGD -------------------------------------------------------------------------------------

def _linear_batch(n=16, d=100, c=50, seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(d, c))
    x = torch.randn(n, 1, 1, d) * 3
    y = torch.randint(0, c, (n,))
    return model, x, y


@pytest.mark.parametrize(("mechanism", "std_factor"), [("gaussian", 1.0), ("laplace", math.sqrt(2))])
def test_dp_noise_has_the_configured_scale(mechanism: str, std_factor: float) -> None:
    model, x, y = _linear_batch()
    sigma, clip, n = 0.8, 0.5, len(y)
    params = dict(model.named_parameters())
    noisy = DP(DPParams(noise_multiplier=sigma, clip=clip, mechanism=mechanism))
    clean = DP(DPParams(noise_multiplier=0.0, clip=clip))
    _, g_noisy, _ = noisy.gradient(model, x, y, params, torch.Generator().manual_seed(3))
    _, g_clean, _ = clean.gradient(model, x, y, params, torch.Generator().manual_seed(3))
    noise = torch.cat([(g_noisy[k] - g_clean[k]).flatten() for k in params])
    expected = std_factor * sigma * clip / n
    assert noise.numel() == 5050
    assert abs(float(noise.std()) / expected - 1) < 0.06
    assert abs(float(noise.mean())) < 4 * expected / math.sqrt(noise.numel())


def test_dp_clips_each_example_and_matches_plain_gradient_without_clipping() -> None:
    model, x, y = _linear_batch(n=8)
    params = dict(model.named_parameters())
    # Reference per-example gradients by a plain loop.
    per = []
    for i in range(len(y)):
        _, g, _ = gradient_step(model, x[i : i + 1], y[i : i + 1], params)
        per.append(g)
    norms = torch.stack([torch.sqrt(sum(v.pow(2).sum() for v in g.values())) for g in per])
    clip = float(norms.median())
    _, grads = per_example_gradients(model, x, y, params)
    for k in params:
        torch.testing.assert_close(grads[k], torch.stack([g[k] for g in per]), atol=1e-5, rtol=1e-4)
    summed, got_norms = clip_and_sum(grads, clip)
    torch.testing.assert_close(got_norms, norms, atol=1e-4, rtol=1e-4)
    _, g_dp, _ = DP(DPParams(noise_multiplier=0.0, clip=clip)).gradient(model, x, y, params, torch.Generator())
    for k in params:
        factors = (clip / (norms + 1e-6)).clamp(max=1)
        expected = sum(f * g[k] for f, g in zip(factors, per)) / len(y)
        torch.testing.assert_close(g_dp[k], expected, atol=1e-5, rtol=1e-4)
    # Each example's clipped contribution is bounded by clip.
    clipped = [torch.sqrt(sum((f * g[k]).pow(2).sum() for k in params)) for f, g in zip(factors, per)]
    assert max(float(c) for c in clipped) <= clip * (1 + 1e-5)
    # Huge clip, no noise: exactly the ordinary mean gradient.
    _, g_big, _ = DP(DPParams(noise_multiplier=0.0, clip=1e9)).gradient(model, x, y, params, torch.Generator())
    _, g_plain, _ = gradient_step(model, x, y, params)
    for k in params:
        torch.testing.assert_close(g_big[k], g_plain[k], atol=1e-5, rtol=1e-4)


def test_dp_epsilon_accumulates_in_client_state() -> None:
    dp = DP(DPParams(noise_multiplier=1.1, clip=1.0, delta=1e-5))
    state = RecordDict()
    eps = []
    for rnd in (1, 2, 3):
        out = dp.round_metrics(RoundContext(state=state, round=rnd, steps=5, batch_size=32, partition_size=1000))
        eps.append(out["dp-epsilon"])
        assert out["dp-steps"] == 5 * rnd
    assert 0 < eps[0] < eps[1] < eps[2]
    from opacus.accountants import RDPAccountant

    ref = RDPAccountant()
    for _ in range(15):
        ref.step(noise_multiplier=1.1, sample_rate=0.032)
    assert eps[2] == pytest.approx(ref.get_epsilon(1e-5))
    lap = DP(DPParams(noise_multiplier=1.0, mechanism="laplace"))
    assert lap.round_metrics(RoundContext(RecordDict(), 1, 5, 32, 1000)) == {} and lap.epsilon(RecordDict()) is None


def test_soft_one_hot_labels_give_the_hard_label_gradient() -> None:
    model, x, y = _linear_batch(n=4)
    params = dict(model.named_parameters())
    _, hard, _ = gradient_step(model, x, y, params)
    _, soft, _ = gradient_step(model, x, torch.nn.functional.one_hot(y, 50).float(), params)
    for k in params:
        torch.testing.assert_close(soft[k], hard[k])


# --- end to end ---------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["fedsgd", "fedavg-delta", "fedavg-weights"])
def test_instahide_plus_gradprune_end_to_end(tiny, mode: str) -> None:
    protocol, _, upload = mode.partition("-")
    cfg = tiny(
        'defenses=[{name="instahide", k=4}, {name="gradprune", p=0.9}]',
        f"federation.protocol={protocol}", f"federation.upload={upload or 'weights'}",
    )  # fmt: skip
    out = run_simulation(cfg)
    log, truth = TrafficLog.open(out.run_dir), GroundTruth.open(out.run_dir)
    up = log.messages(direction="up", message_type="train")
    assert len(up) == 6
    data = load_task(cfg).dataset
    for msg in up:
        sent = log.tensors(msg.id, "arrays")
        if upload == "weights":  # weights: the change against what the client received is pruned
            down = next(m for m in log.messages(direction="down") if m.flower_id == msg.reply_to)
            received = log.tensors(down.id, "arrays")
            sent = {k: v - received[k] for k, v in sent.items()}
        for name, t in sent.items():
            zeros = int((t == 0).sum())
            assert zeros >= 0.9 * t.numel() - 1e-9, (name, zeros, t.numel())
        assert all(not name.split("/", 1)[1].startswith("keys") for name in log.tensors(msg.id))
        assert msg.metrics["metrics/defense-s"] > 0
        batch = truth.batch_for(msg.reply_to)
        assert batch.extra["defenses"][0]["name"] == "instahide"
        assert len(batch.steps) == (1 if protocol == "fedsgd" else 2)
        for step in batch.steps:
            partners, coeffs, signs = step["keys/partners"], step["keys/coeffs"], step["keys/signs"]
            assert partners.shape == (8, 4) and coeffs.shape == (8, 4) and signs.shape == (8, 1, 28, 28)
            assert (partners[:, 0] == step["indices"]).all()
            np.testing.assert_array_equal(step["images"], data.train_x[step["indices"]].numpy())
            np.testing.assert_array_equal(step["labels"], data.train_y[step["indices"]].numpy())
            mixed = mix(data.train_x[torch.from_numpy(partners)], torch.from_numpy(coeffs)).numpy()
            c = np.asarray(data.mean, np.float32).reshape(1, -1, 1, 1)  # signs flip around the dataset mean
            np.testing.assert_allclose(step["encoded"], c + signs * (mixed - c), atol=1e-6)
            assert step["encoded_labels"].shape == (8, 10)


def test_dp_run_reports_increasing_epsilon(tiny) -> None:
    cfg = tiny('defenses=[{name="dp", noise_multiplier=1.0, clip=1.0}]', "federation.rounds=3")
    out = run_simulation(cfg)
    log = TrafficLog.open(out.run_dir)
    per_client: dict[int, list[float]] = {}
    for msg in log.messages(direction="up", message_type="train"):
        per_client.setdefault(msg.src_node, []).append(msg.metrics["metrics/dp-epsilon"])
    assert len(per_client) == 3
    for eps in per_client.values():
        assert len(eps) == 3 and 0 < eps[0] < eps[1] < eps[2]


# --- config -------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ('defenses=[{name="gradprune", p=1.5}]', "defenses[0].p: input should be less than 1"),
        ('defenses=[{name="gradprune", p=0}]', "defenses[0].p: input should be greater than 0"),
        ('defenses=[{name="gradprune", p=0.9, scope="net"}]', "defenses[0].scope: must be one of 'layer' or 'global'"),
        ('defenses=[{name="mixup", k=4}, {name="nope"}]', "defenses[1].name: unknown defense 'nope'; choose one of: dp, gradprune, instahide, mixup"),
        ('defenses=[{name="mixup", k=1}]', "defenses[0].k: input should be greater than or equal to 2"),
        ('defenses=[{name="mixup", kk=4}]', "defenses[0].kk: unknown key"),
        ('defenses=[{name="instahide", variant="outer"}]', "defenses[0].variant: must be one of 'intra' or 'inter'"),
        ('defenses=[{name="dp", noise_multiplier=-1}]', "defenses[0].noise_multiplier: input should be greater than or equal to 0"),
        ('defenses=[{name="dp"}]', "defenses[0].noise_multiplier: required"),
        ('defenses=[{name="mixup", k=2, max_coeff=0.4}]', "defenses[0].max_coeff: must be >= 1/k"),
        ('defenses=[{name="mixup"}, {name="instahide"}]', "defenses: at most one batch encoder"),
        ('defenses=[{name="gradprune", p=0.5}, {name="gradprune", p=0.9}]', "defenses[1]: 'gradprune' is already listed"),
        ('defenses=[{p=0.5}]', "defenses[0].name: required"),
        ("defenses=[3]", "defenses[0]: expected a table"),
    ],
)
def test_defense_config_errors_are_one_line_naming_the_key(override: str, expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert expected in str(err.value) and "\n" not in str(err.value)


def test_defenses_from_toml_round_trip(tmp_path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[[defenses]]\nname = "instahide"\nk = 6\n[[defenses]]\nname = "gradprune"\np = 0.99\nscope = "global"\n')
    cfg = load_config(path)
    assert [d.name for d in cfg.defenses] == ["instahide", "gradprune"]
    assert cfg.defenses[0].k == 6 and cfg.defenses[0].max_coeff == 0.65 and cfg.defenses[1].scope == "global"
    from fl_sim.rundir import create_run_dir, load_run_config

    run_dir = create_run_dir(load_config(path, [f"out_dir={tmp_path}"]), command=["t"])
    assert load_run_config(run_dir).defenses == cfg.defenses
    assert load_config(run_dir / "config.toml").defenses == cfg.defenses


def test_dp_rejects_batchnorm_models(tiny) -> None:
    cfg = tiny('defenses=[{name="dp", noise_multiplier=1.0}]', "model.name=resnet18", "model.options={}")
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    assert str(err.value).startswith("defenses[0]: dp needs per-example gradients")


def test_build_defenses_orders_hooks(tiny) -> None:
    cfg = tiny('defenses=[{name="gradprune", p=0.9}, {name="instahide", k=4}, {name="dp", noise_multiplier=0.5}]')
    task = load_task(cfg)
    d = build_defenses(cfg, input_shape=task.dataset.input_shape, num_classes=10, model=task.new_model())
    assert d.names == ["gradprune", "instahide", "dp"]
    assert d.encoder.position == 1 and d.step.position == 2 and [t.position for t in d.transforms] == [0]
    assert isinstance(cfg.defenses[0], GradPruneParams)


def _train_encoded(cfg, steps: int) -> float:
    """Centralised SGD on encoded batches of the embedded digits; accuracy on CLEAN test images."""
    from torch.nn import functional as F

    from fl_sim.task import evaluate_model

    torch.manual_seed(0)
    task = load_task(cfg)
    model = task.new_model()
    data = task.dataset
    defenses = build_defenses(cfg, input_shape=data.input_shape, num_classes=data.num_classes, model=model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    pool = np.arange(len(data.train_y))
    for step in range(steps):
        idx = np.random.default_rng(step).choice(pool, 32, replace=False)
        x, y, _ = defenses.for_round(seed=0, round=step, partition=0).encode(
            data.train_x[idx], data.train_y[idx], EncodeContext(idx, pool, data.train_x, data.train_y, data.num_classes))
        model.train()
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return evaluate_model(model, *task.test_split)[1]


def test_instahide_as_its_code_trains_a_model_that_classifies_clean_images(tiny) -> None:
    """Signs flipped around the dataset mean (InstaHide's normalize-then-flip): clean test images stay
    in the training distribution. Flipping around 0.5 leaves the model unusable on clean images."""
    mean_acc = _train_encoded(tiny('defenses=[{name="instahide", k=4}]', "model.options.width=16"), 300)
    half_acc = _train_encoded(tiny('defenses=[{name="instahide", k=4, center="half"}]', "model.options.width=16"), 300)
    assert mean_acc > 0.6, mean_acc
    assert half_acc < 0.3, half_acc
