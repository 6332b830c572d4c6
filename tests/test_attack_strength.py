"""The choices behind the default attack (#19): optimisation space, best iterate, and a quality floor."""

from __future__ import annotations

import importlib.util
import io
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

from adversary.attacks import AttackInputs, ConfigError, ThreatModel, build_attack, preset_config
from adversary.attacks.regularizers import REGULARIZERS, RegContext
from adversary.metrics import evaluate_reconstruction
from fl_sim.data import load_sample_images
from fl_sim.models import build_model, input_statistics

ROOT = Path(__file__).resolve().parents[1]


def _case(index: int = 0, mean: float = 0.4, std: float = 0.2) -> tuple[AttackInputs, ThreatModel, torch.Tensor]:
    x, y = load_sample_images("cifar10-sample")
    x, y = x[index : index + 1], y[index : index + 1]
    torch.manual_seed(0)
    model = build_model("convnet", (3, 32, 32), 10, mean=mean, std=std, width=16)
    names, params = zip(*model.named_parameters())
    grads = torch.autograd.grad(F.cross_entropy(model(x), y), params)
    inputs = AttackInputs(model, {n: g.detach() for n, g in zip(names, grads)}, labels=y, image_shape=(3, 32, 32))
    return inputs, ThreatModel(labels="known", num_images=1), x


def test_the_model_states_its_input_statistics() -> None:
    mean, std = input_statistics(build_model("convnet", (3, 32, 32), 10, mean=[0.1, 0.2, 0.3], std=0.25), 3)
    assert mean.flatten().tolist() == pytest.approx([0.1, 0.2, 0.3]) and std.flatten().tolist() == pytest.approx([0.25] * 3)
    mean, std = input_statistics(torch.nn.Sequential(torch.nn.Flatten()), 1)  # none: the identity
    assert mean.item() == 0.0 and std.item() == 1.0


def test_normalised_space_starts_steps_and_boxes_in_units_of_the_std() -> None:
    """z = (x - mean) / std: the start is mean + std * N(0, 1), and signed Adam's first step moves each
    pixel by exactly lr * std (pixel space: by lr), inside the data range."""
    inputs, tm, _ = _case(mean=0.4, std=0.2)
    lr = 0.05
    common = {"iterations": 1, "optimizer": {"lr": lr}, "regularizers": {"tv": None}}
    start = torch.randn((1, 1, 3, 32, 32), generator=torch.Generator().manual_seed(0))[0]
    norm = build_attack("inverting-gradients-pixel", {**common, "space": "normalized"}).run(inputs, tm).images
    inside = ((0.4 + 0.2 * start) > 0.02) & ((0.4 + 0.2 * start) < 0.98)
    step = (norm - (0.4 + 0.2 * start))[inside].abs()
    assert inside.float().mean() > 0.9 and torch.allclose(step, torch.full_like(step, lr * 0.2), atol=1e-5)
    pixel = build_attack("inverting-gradients-pixel", {**common, "space": "pixel"}).run(inputs, tm).images
    inside = (start > 0.06) & (start < 0.94)
    step = (pixel - start)[inside].abs()
    assert torch.allclose(step, torch.full_like(step, lr), atol=1e-5)
    assert float(norm.min()) >= 0.0 and float(norm.max()) <= 1.0


def test_best_keeps_the_iterate_with_the_lowest_attack_loss() -> None:
    inputs, tm, _ = _case()
    over = {"iterations": 40, "optimizer": {"lr": 0.3, "decay": []}}  # a large, constant step: the loss oscillates
    best = build_attack("inverting-gradients-pixel", {**over, "keep": "best"}).run(inputs, tm)
    last = build_attack("inverting-gradients-pixel", {**over, "keep": "last"}).run(inputs, tm)
    assert best.loss_curve == last.loss_curve  # the same optimisation; only what it returns differs
    # every iterate evaluated competes, the last step's result (which only keep=last returns) too
    assert best.trial_losses[0] == pytest.approx(min(*best.loss_curve, last.trial_losses[0]), rel=1e-4)
    assert min(best.loss_curve) < last.trial_losses[0]  # a case where the last iterate is not the best
    assert best.trial_losses[0] < last.trial_losses[0]


@pytest.mark.parametrize(("over", "error"), [({"space": "rgb"}, "space: unknown choice 'rgb'; choose one of: pixel, normalized"),
                                             ({"keep": "first"}, "keep: unknown choice 'first'; choose one of: last, best"),
                                             ({"rank": "lpips"}, "rank: unknown choice 'lpips'; choose one of: loss, log-objective")])
def test_bad_choices_are_one_line(over: dict, error: str) -> None:
    with pytest.raises(ConfigError, match=error):
        preset_config("inverting-gradients", over)


def test_configs_written_before_keep_their_meaning() -> None:
    old = {k: v for k, v in preset_config("inverting-gradients-pixel").items() if k not in ("space", "keep")}
    resolved = preset_config(old)
    assert resolved["space"] == "pixel" and resolved["keep"] == "last"


def test_trials_of_different_priors_are_ranked_by_the_presets_weights() -> None:
    inputs, tm, _ = _case()
    attack = build_attack("inverting-gradients-pixel", {"iterations": 30, "restarts": 2, "prior_scales": [1.0, 100.0],
                                                  "regularizers": {"tv": {"weight": 0.01}}})
    result = attack.run(inputs, tm)
    tv = [float(REGULARIZERS.build("tv")(result.all_images[i], RegContext())) for i in range(2)]
    assert tv[1] < 0.5 * tv[0]  # the second trial was optimised under a prior 100 times as strong
    for i in range(2):  # both ranked at the preset's own weight, 0.01
        assert result.trial_losses[i] == pytest.approx(result.trial_objectives[i] + 0.01 * tv[i], rel=1e-4, abs=1e-6)
    assert result.best_trial == min(range(2), key=lambda i: result.trial_losses[i])


def test_where_no_trial_matched_the_update_the_strongest_prior_decides() -> None:
    """Every objective above ``unmatched``: the fit says nothing about the images, so the trials of the strongest
    prior compete alone (the rank decides among them); one trial below it: the rank decides among all, as before."""
    inputs, tm, _ = _case()
    over = {"iterations": 30, "restarts": 4, "prior_scales": [1.0, 100.0], "regularizers": {"tv": {"weight": 0.01}}}
    ranked = build_attack("inverting-gradients-pixel", over).run(inputs, tm)
    assert ranked.best_trial == min(range(4), key=lambda i: ranked.trial_losses[i]) and ranked.best_trial % 2 == 0
    floor = min(ranked.trial_objectives)
    unmatched = build_attack("inverting-gradients-pixel", {**over, "unmatched": 0.5 * floor}).run(inputs, tm)
    assert unmatched.trial_objectives == ranked.trial_objectives  # the rule picks; it changes no trial's path
    assert unmatched.best_trial == min((1, 3), key=lambda i: ranked.trial_losses[i])
    assert unmatched.config["unmatched"] == pytest.approx(0.5 * floor)
    matched = build_attack("inverting-gradients-pixel", {**over, "unmatched": 1.01 * floor}).run(inputs, tm)
    assert matched.best_trial == ranked.best_trial


@pytest.mark.parametrize("value", [0, -1.0, "high", True])
def test_bad_unmatched_is_one_line(value) -> None:
    with pytest.raises(ConfigError, match=r"^unmatched: must be a number > 0"):
        preset_config("inverting-gradients", {"unmatched": value})


@pytest.mark.parametrize("scales", [[], [0.0], ["a"], [True], 2.0])
def test_bad_prior_scales_are_one_line(scales) -> None:
    with pytest.raises(ConfigError, match=r"^prior_scales: must be a non-empty list of numbers > 0"):
        preset_config("inverting-gradients", {"prior_scales": scales})


def test_default_preset_quality_floor_convnet_batch_1_300_iterations() -> None:
    """Pinned from benchmarks/attack_quality.py (README "How strong the default attack is"): this is the matrix's
    first case (same weights, the same two images), where the default scored LPIPS 0.021 and breaching's Inverting
    Gradients 0.197 (0.02-0.03 against 0.21 in earlier runs); the floor leaves room for another machine's kernels,
    not for losing the weak-prior trial (0.20 with the prior fixed at 0.4, 0.09 at 150 iterations)."""
    x, y = load_sample_images("cifar10-sample")
    torch.manual_seed(0)
    model = build_model("convnet", (3, 32, 32), 10, width=32)
    names, params = zip(*model.named_parameters())
    scores = []
    for i in range(2):
        grads = torch.autograd.grad(F.cross_entropy(model(x[i : i + 1]), y[i : i + 1]), params)
        inputs = AttackInputs(model, {n: g.detach() for n, g in zip(names, grads)}, labels=y[i : i + 1], image_shape=(3, 32, 32))
        images = build_attack("inverting-gradients", {"iterations": 300}).run(inputs, ThreatModel(labels="known", num_images=1)).images
        scores.append(evaluate_reconstruction(images, x[i : i + 1])["lpips_avg"])
    assert sum(scores) / 2 < 0.05, scores


def test_screening_runs_the_winner_exactly_as_without_it_and_stops_computing_the_others() -> None:
    """Trials step independently (element-wise Adam), so the trial that survives the screen follows the same path as
    in the unscreened run; the others stop where they were, and the cost is R * s + (1 - s) runs of the budget."""
    inputs, tm, _ = _case()
    over = {"iterations": 40, "restarts": 3, "prior_scales": [4.0, 1.0, 0.1], "rank": "log-objective",
            "space": "normalized", "keep": "best"}
    full = build_attack("inverting-gradients-pixel", {**over, "screen": 0.0}).run(inputs, tm)
    screened = build_attack("inverting-gradients-pixel", {**over, "screen": 0.25}).run(inputs, tm)
    w = screened.best_trial
    assert screened.trial_curves[w] == full.trial_curves[w] and len(screened.trial_curves[w]) == 40
    assert torch.equal(screened.all_images[w], full.all_images[w])
    assert sorted(len(c) for c in screened.trial_curves) == [10, 10, 40]  # the others ran the first quarter only
    for i in range(3):
        if i != w:
            assert screened.trial_curves[i] == full.trial_curves[i][:10]
    assert screened.timing["trial_iterations"] == 3 * 10 + 30 and full.timing["trial_iterations"] == 120
    assert screened.timing["iterations_used"] == 40


def test_screening_holds_learnt_labels_too() -> None:
    """Labels optimised jointly (logits per trial): a screened-out trial's logits stay put with its images."""
    inputs, _, _ = _case()
    tm = ThreatModel(labels="unknown", num_images=1)
    over = {"iterations": 12, "labels": "joint", "restarts": 3}
    full = build_attack("inverting-gradients", {**over, "screen": 0.0}).run(inputs, tm)
    screened = build_attack("inverting-gradients", over).run(inputs, tm)
    w = screened.best_trial
    assert screened.trial_curves[w] == full.trial_curves[w]
    assert w == full.best_trial and torch.equal(screened.labels, full.labels)
    assert sorted(len(c) for c in screened.trial_curves) == [3, 3, 12] and screened.timing["trial_iterations"] == 18


def test_screening_keeps_the_trial_the_full_ranking_keeps_on_the_floor_case() -> None:
    inputs, tm, _ = _case()
    full = build_attack("inverting-gradients", {"iterations": 80, "screen": 0.0}).run(inputs, tm)
    screened = build_attack("inverting-gradients", {"iterations": 80}).run(inputs, tm)
    assert screened.config["screen"] == 0.25 and screened.best_trial == full.best_trial
    assert torch.equal(screened.images, full.images)


@pytest.mark.parametrize("screen", [1.0, -0.1, "half", True, None])
def test_bad_screen_is_one_line(screen) -> None:
    with pytest.raises(ConfigError, match=r"^screen: must be a number in \[0, 1\) \(0: no screening\), got"):
        preset_config("inverting-gradients", {"screen": screen})


def test_screening_refuses_an_optimizer_that_runs_trials_one_by_one() -> None:
    with pytest.raises(ConfigError, match="^screen: needs an optimizer that steps the trials together"):
        build_attack("inverting-gradients", {"optimizer": {"name": "lbfgs"}})
    build_attack("inverting-gradients", {"optimizer": {"name": "lbfgs"}, "screen": 0})


def _quality_benchmark():
    spec = importlib.util.spec_from_file_location("attack_quality", ROOT / "benchmarks" / "attack_quality.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses resolve their annotations through it
    spec.loader.exec_module(module)
    return module


def test_the_quality_benchmark_reads_half_the_iterations_off_the_budget_grid(tmp_path: Path) -> None:
    aq = _quality_benchmark()
    row = {"psnr": 0.0, "ssim": 0.0, "compute": 1.0, "seconds": 0.0}
    lpips = {("a", "breaching", 300): 0.30, ("a", "breaching", 1200): 0.20, ("a", "default", 150): 0.25,
             ("a", "default", 300): 0.19, ("a", "default", 1200): 0.10,
             ("b", "breaching", 300): 0.10, ("b", "default", 150): 0.20, ("b", "default", 300): 0.12}
    rows = [{**row, "case": c, "method": m, "budget": b, "lpips": v} for (c, m, b), v in lpips.items()]
    aq.render(rows, tmp_path, aq.Console(file=io.StringIO()))
    got = {(r["case"], r["budget"]): r for r in rows if r["method"] == "breaching"}
    # each row: the budget at which its method first reaches the other's LPIPS at the row's budget
    assert got["a", 300]["default in half"] == "yes" and got["a", 300]["reaches the other at"] == ">1200"  # 0.25 <= 0.30
    assert got["a", 1200]["default in half"] == "yes"  # 0.19 at 300, a quarter of 1200
    assert got["b", 300]["default in half"] == "no" and got["b", 300]["reaches the other at"] == "300"  # never
    ours = {(r["case"], r["budget"]): r for r in rows if r["method"] == "default"}
    assert ours["a", 300]["reaches the other at"] == "150" and ours["a", 1200]["reaches the other at"] == "300"
    assert ours["b", 300]["reaches the other at"] == ">300" and "reaches the other at" not in ours["a", 150]
    table = (tmp_path / "table.md").read_text()
    assert ("default at or below breaching's LPIPS in 2 of 3 settings (above in: b 300); reaches breaching's final LPIPS "
            "in at most half its iterations in 2 of 3") in table
    assert len(json.loads((tmp_path / "rows.json").read_text())) == len(rows)


def test_the_quality_benchmark_averages_seeds_and_reports_their_spread(tmp_path: Path) -> None:
    """--seeds N: each method runs from N random starts; the row is their mean and lpips_sd the spread of the per-seed
    means, the same numbers as the runs taken one by one."""
    aq = _quality_benchmark()
    case = aq.Case("cifar10-sample", "convnet", False, 1, images=1, budgets=(6,))
    rows = aq.measure(case, ["default"], [6], 1, tmp_path, aq.Console(file=io.StringIO()), seeds=2)
    row = next(r for r in rows if r["budget"] == 6)
    x_t, y_t, x_rest, y_rest, num_classes = aq.case_images(case, 1)
    model = aq.case_model(case, x_rest, y_rest, num_classes)
    grad = aq.target_gradient(model, x_t, y_t)
    alone = [evaluate_reconstruction(aq.run_ours("default", model, grad, y_t, 6, seed=s).images.clamp(0, 1), x_t)["lpips_avg"]
             for s in (0, 1)]
    assert alone[0] != alone[1] and row["seeds"] == 2
    assert row["lpips"] == pytest.approx(sum(alone) / 2, abs=1e-6) and row["lpips_seeds"] == pytest.approx(alone, abs=1e-6)
    assert row["lpips_sd"] == pytest.approx(abs(alone[0] - alone[1]) / math.sqrt(2), abs=1e-6)
    assert aq.lpips_cell(row) == f"{row['lpips']:.3f} ± {row['lpips_sd']:.3f}" and aq.lpips_cell({"lpips": 0.5}) == "0.500"
    # every trial the attack ended with, scored for the reader only: one picked per run, the oracle no worse than it
    assert sorted((t["seed"], t["trial"]) for t in row["trials"]) == [(s, j) for s in (0, 1) for j in range(3)]
    for s in (0, 1):
        picked = [t for t in row["trials"] if t["seed"] == s and t["picked"]]
        assert len(picked) == 1 and picked[0]["lpips"] == pytest.approx(alone[s], abs=1e-6)
    best = [min(t["lpips"] for t in row["trials"] if t["seed"] == s) for s in (0, 1)]
    assert row["oracle_lpips"] == pytest.approx(sum(best) / 2) and row["oracle_lpips"] <= row["lpips"]


@pytest.mark.parametrize(("args", "error"), [(["--methods", "best-ever"], "--methods: unknown method 'best-ever'; choose from pixel"),
                                             (["--seeds", "0", "--methods", "default"], "--seeds: must be an integer >= 1, got 0"),
                                             (["--shard", "2/2", "--methods", "default"], "--shard: expected I/N with 0 <= I < N, got '2/2'"),
                                             (["--only", "cifar10 mlp b1", "--methods", "default"],
                                              "--only: no case 'cifar10 mlp b1' in --cases readme; its cases: cifar10 convnet b1"),
                                             (["--render", "no-such-rows.json"], "--render: cannot read rows from no-such-rows.json"),
                                             (["--render", "README.md"], "--render: cannot read rows from README.md")])
def test_the_quality_benchmark_refuses_bad_options_in_one_line(args: list[str], error: str) -> None:
    done = subprocess.run([sys.executable, "benchmarks/attack_quality.py", *args], capture_output=True, text=True, cwd=ROOT, check=False,
                          timeout=300)
    assert done.returncode == 2
    assert error in done.stderr and "Traceback" not in done.stderr
