"""Named attacks as short declarative configs, merged with nested overrides.

A preset is a dict with the sections below; component sections hold ``name`` plus the
component's options, ``regularizers`` maps a regularizer name to ``{"weight": .., **options}``
(an override of ``None`` removes it). An override that changes a component's ``name`` replaces
that section instead of merging into it, so stale options of the old component never leak.
"""

from __future__ import annotations

import copy
from typing import Any

from adversary.attacks.bn import BN_STRATEGIES
from adversary.attacks.labels import LABEL_STRATEGIES
from adversary.attacks.objectives import OBJECTIVES
from adversary.attacks.optimizers import OPTIMIZERS
from adversary.attacks.registry import ConfigError
from adversary.attacks.regularizers import REGULARIZERS
from adversary.attacks.runner import (
    CHOICES,
    GradientInversion,
    check_choice,
    check_prior_scales,
    check_screen,
    check_unmatched,
)
from adversary.attacks.stopping import STOPPING_RULES
from fl_sim.config import ATTACK_SETTINGS_CHECKS
from fl_sim.registry import Registry

SECTIONS: dict[str, Registry] = {
    "objective": OBJECTIVES,
    "optimizer": OPTIMIZERS,
    "labels": LABEL_STRATEGIES,
    "bn": BN_STRATEGIES,
    "stop": STOPPING_RULES,
}
SCALARS = ("iterations", "restarts", "init", "seed", "adam_smoothing", "space", "keep", "prior_scales", "rank", "screen",
           "unmatched")
KEYS = (*SECTIONS, "regularizers", *SCALARS)

_BASE = {"bn": {"name": "none"}, "stop": {"name": "never"}, "restarts": 1, "init": "randn", "seed": 0, "space": "pixel",
         "keep": "last", "prior_scales": [1.0], "rank": "loss", "screen": 0.0}
_ADAM = {"name": "adam-signed", "lr": 0.1}

PRESETS: dict[str, dict[str, Any]] = {
    # Zhu et al. 2019: squared-L2 gradient distance, L-BFGS (no line search, as DLG's code), no prior
    # (labels: known, or "joint" as in DLG). Init U[0,1] instead of DLG's N(0,1): N(0,1) diverged in our runs.
    "dlg": {**_BASE, "objective": {"name": "l2"}, "regularizers": {}, "optimizer": {"name": "lbfgs", "lr": 1.0, "line_search": None},
            "labels": {"name": "known"}, "iterations": 300, "init": "rand"},
    # Zhao et al. 2020: DLG with the label read off the last layer's gradient.
    "idlg": {**_BASE, "objective": {"name": "l2"}, "regularizers": {}, "optimizer": {"name": "lbfgs", "lr": 1.0, "line_search": None},
             "labels": {"name": "idlg"}, "iterations": 300, "init": "rand"},
    # Geiping et al. 2020, the strongest settings measured here (README "How strong the default attack is",
    # benchmarks/attack_quality.py): optimised in the model's normalised input space with the best iterate
    # kept, as breaching does, and three trials whose TV weights are 4, 1 and 0.1 times 0.1 (0.4 a strong
    # prior for a gradient that pins the image loosely, ResNet-18; 0.01 what a plain ConvNet's gradient
    # needs), ranked by log(objective) + 0.1 TV (runner.RANKS), except where none matched the update (cosine
    # distance above 0.5 for all): there the strongest prior's trial is kept (runner.check_unmatched). The
    # trials are screened after a quarter of the budget (runner.check_screen): only the best-ranked runs on,
    # so the three cost 1.5 runs, not 3.
    "inverting-gradients": {**_BASE, "objective": {"name": "cosine"}, "regularizers": {"tv": {"weight": 0.1}},
                            "optimizer": dict(_ADAM), "labels": {"name": "known"}, "iterations": 4800,
                            "space": "normalized", "keep": "best", "restarts": 3, "prior_scales": [4.0, 1.0, 0.1],
                            "rank": "log-objective", "screen": 0.25, "unmatched": 0.5},
    # The paper's Eq. 2 as this project ran it before: cosine + 0.01 TV in the data range, signed Adam lr 0.1
    # with step decay, one trial, its last iterate.
    "inverting-gradients-pixel": {**_BASE, "objective": {"name": "cosine"}, "regularizers": {"tv": {"weight": 0.01}},
                                  "optimizer": dict(_ADAM), "labels": {"name": "known"}, "iterations": 4800},
    # Huang et al. 2021 Eq. 3: cosine + alpha_TV TV + alpha_BN R_BN, 10,000 iterations (strongest attacker).
    "huang-eq3": {**_BASE, "objective": {"name": "cosine"},
                  "regularizers": {"tv": {"weight": 0.05}, "bn_prior": {"weight": 0.001}},
                  "optimizer": dict(_ADAM), "labels": {"name": "known"}, "bn": {"name": "exact"}, "iterations": 10000},
    # Yin et al. 2021: BN prior + group consistency over R lockstep trials, labels restored from the gradient.
    # (GradInversion matches gradients in L2; cosine keeps the regularizer weights on one scale here.)
    # What an audit runs unless told otherwise: Inverting Gradients as it works best on the ReLU + max-pool
    # CNNs of Flower's examples with the labels unknown (measured, README "Audit your own Flower app"):
    # uniform start, 4 restarts ranked by the attack's own objective, TV 0.05, labels counted from the
    # classifier's gradient (Geng et al.).
    "audit": {**_BASE, "objective": {"name": "cosine"}, "regularizers": {"tv": {"weight": 0.05}},
              "optimizer": dict(_ADAM), "labels": {"name": "count-aware"}, "iterations": 2000, "restarts": 4,
              "init": "rand"},
    # The audit of clients training with Adam: their update is about lr * sign(g), whose derivative in the
    # images vanishes almost everywhere, so the simulated Adam step is smoothed (adam_smoothing: eps floored
    # at 0.2 x the tensor's median sqrt(v)), and the prior weighs more: a sign pattern pins the image
    # less than a gradient does (measured on examples/adam-batchnorm: TV 0.05 -> 0.2 took the pixel
    # correlation distance to the private digit from 0.27-0.43 to 0.11-0.24, each below the digit's own
    # nearest neighbour).
    "audit-adam": {**_BASE, "objective": {"name": "cosine"}, "regularizers": {"tv": {"weight": 0.2}},
                   "optimizer": dict(_ADAM), "labels": {"name": "count-aware"}, "iterations": 2000, "restarts": 4,
                   "init": "rand", "adam_smoothing": 0.2},
    "gradinversion": {**_BASE, "objective": {"name": "cosine"},
                      "regularizers": {"tv": {"weight": 1e-4}, "l2": {"weight": 1e-6}, "bn_prior": {"weight": 0.01},
                                       "group_consistency": {"weight": 0.01}},
                      "optimizer": dict(_ADAM), "labels": {"name": "yin"}, "bn": {"name": "exact"},
                      "iterations": 4800, "restarts": 4},
}  # fmt: skip

AUDIT_PRESET = "audit"
AUDIT_PRESET_FOR_OPTIMIZER = {"sgd": AUDIT_PRESET, "adam": "audit-adam", "adamw": "audit-adam"}


def audit_preset(optimizer: str) -> str:
    """The preset an audit runs unless told otherwise, for the clients' stated optimiser."""
    return AUDIT_PRESET_FOR_OPTIMIZER.get(optimizer, AUDIT_PRESET)
HUANG_ALPHA_TV = {"none": 0.05, "gradprune": 0.05, "mixup": 0.1, "instahide": 0.01}


def huang_eq3_for_defense(defense: str) -> dict[str, Any]:
    """Overrides of ``huang-eq3`` with the paper's alpha_TV for a defense (TV on |x| for InstaHide)."""
    if defense not in HUANG_ALPHA_TV:
        raise ConfigError(f"unknown defense {defense!r}; choose one of: {', '.join(HUANG_ALPHA_TV)}")
    over: dict[str, Any] = {"regularizers": {"tv": {"weight": HUANG_ALPHA_TV[defense], "on_abs": defense == "instahide"}}}
    if defense == "instahide":  # sign-flipped encodings live in [-1, 1]
        over["optimizer"] = {"box": (-1.0, 1.0)}
    return over


def _merge_section(section: str, base: dict[str, Any], over: Any) -> dict[str, Any]:
    if isinstance(over, str):
        over = {"name": over}
    if not isinstance(over, dict):
        raise ConfigError(f"{section}: expected a dict or a name, got {over!r}")
    if "name" in over and over["name"] != base.get("name"):
        return dict(over)
    return {**base, **over}


def preset_config(preset: str | dict[str, Any], overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The preset's config with ``overrides`` merged in, validated key by key."""
    if isinstance(preset, str):
        if preset not in PRESETS:
            raise ConfigError(f"unknown preset {preset!r}; choose one of: {', '.join(PRESETS)}")
        cfg = copy.deepcopy(PRESETS[preset])
    else:
        cfg = copy.deepcopy(preset)
    # configs written before these keys ran their whole budget, in the data range, and kept the last iterate
    cfg.setdefault("stop", {"name": "never"})
    cfg.setdefault("space", "pixel")
    cfg.setdefault("keep", "last")
    cfg.setdefault("prior_scales", [1.0])
    cfg.setdefault("rank", "loss")
    cfg.setdefault("screen", 0.0)
    for key, value in (overrides or {}).items():
        if key not in KEYS:
            raise ConfigError(f"unknown attack key {key!r}; choose one of: {', '.join(KEYS)}")
        if key in SECTIONS:
            cfg[key] = _merge_section(key, cfg.get(key, {}), value)
        elif key == "regularizers":
            regs = cfg.setdefault("regularizers", {})
            for name, opts in (value or {}).items():
                REGULARIZERS.lookup(name)
                if opts is None:
                    regs.pop(name, None)
                elif isinstance(opts, (int, float)):
                    regs[name] = {**regs.get(name, {}), "weight": float(opts)}
                else:
                    regs[name] = {**regs.get(name, {}), **opts}
        else:
            cfg[key] = value
    _validate(cfg)
    return cfg


def _validate(cfg: dict[str, Any]) -> None:
    for key in cfg:
        if key not in KEYS:
            raise ConfigError(f"unknown attack key {key!r}; choose one of: {', '.join(KEYS)}")
    for section, registry in SECTIONS.items():
        opts = dict(cfg.get(section, {}))
        name = opts.pop("name", None)
        if name is None:
            raise ConfigError(f"{section}: missing 'name'; choose one of: {', '.join(sorted(registry))}")
        registry.lookup(name)
        accepted = registry.options(name)
        for opt in opts:
            if opt not in accepted:
                raise ConfigError(f"{section} {name!r}: unknown option {opt!r}; choose one of: {', '.join(accepted) or '(none)'}")
    for name, opts in cfg.get("regularizers", {}).items():
        REGULARIZERS.lookup(name)
        accepted = REGULARIZERS.options(name)
        if "weight" not in opts:
            raise ConfigError(f"regularizers.{name}: missing 'weight'")
        for opt in opts:
            if opt != "weight" and opt not in accepted:
                raise ConfigError(f"regularizers.{name}: unknown option {opt!r}; choose one of: weight, {', '.join(accepted)}")
    for key, choices in CHOICES.items():
        check_choice(key, cfg.get(key, choices[0]))
    for key in ("iterations", "restarts"):
        value = cfg.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"{key}: must be an integer >= 1, got {value!r}")
    if not isinstance(cfg.get("seed"), int) or isinstance(cfg.get("seed"), bool):
        raise ConfigError(f"seed: must be an integer, got {cfg.get('seed')!r}")
    check_prior_scales(cfg.get("prior_scales"))
    check_screen(cfg.get("screen", 0.0))
    check_unmatched(cfg.get("unmatched"))
    smoothing = cfg.get("adam_smoothing", 0.0)
    if isinstance(smoothing, bool) or not isinstance(smoothing, (int, float)) or not smoothing >= 0:
        raise ConfigError(f"adam_smoothing: must be a number >= 0 (0: the exact Adam step), got {smoothing!r}")


def check_attack_settings(preset: str, overrides: dict[str, Any]) -> None:
    """A run config's ``adversary.preset`` and ``adversary.attack`` resolve (checked when the config loads)."""
    preset_config(preset, overrides)


ATTACK_SETTINGS_CHECKS.append(check_attack_settings)


def build_attack(preset: str | dict[str, Any], overrides: dict[str, Any] | None = None) -> GradientInversion:
    """A GradientInversion from a preset name (or config dict) and nested overrides."""
    cfg = preset_config(preset, overrides)
    regs = [(name, o["weight"], {k: v for k, v in o.items() if k != "weight"}) for name, o in cfg.get("regularizers", {}).items()]
    return GradientInversion(
        objective=cfg["objective"],
        regularizers=regs,
        optimizer=cfg["optimizer"],
        label_strategy=cfg["labels"],
        bn_strategy=cfg["bn"],
        iterations=int(cfg["iterations"]),
        restarts=int(cfg["restarts"]),
        init=cfg["init"],
        seed=int(cfg["seed"]),
        adam_smoothing=float(cfg.get("adam_smoothing", 0.0)),
        stop=cfg["stop"],
        space=cfg["space"],
        keep=cfg["keep"],
        prior_scales=cfg["prior_scales"],
        rank=cfg["rank"],
        screen=float(cfg["screen"]),
        unmatched=cfg.get("unmatched"),
    )
