"""Pure-PyTorch gradient inversion attacks, composed from registered parts.

Pick parts by name (objectives, regularizers, optimizers, label and BN strategies), or a
preset (``build_attack("huang-eq3", overrides)``); every part declares the knowledge it needs
and ``check_grants`` refuses an attack the ThreatModel does not allow. No flwr / ray here.
"""

from adversary.attacks.analytic import linear_combination_candidates, recover_single_image
from adversary.attacks.bn import BN_STRATEGIES, batch_stats_from_running_update, infer_bn_from_update, record_bn_stats
from adversary.attacks.hparam_search import ALPHA_BN, ALPHA_TV, SearchPoint, grid_search, optuna_search
from adversary.attacks.labels import LABEL_STRATEGIES, LabelGuess, allocate_counts, label_accuracy
from adversary.attacks.objectives import OBJECTIVES
from adversary.attacks.optimizers import OPTIMIZERS
from adversary.attacks.presets import AUDIT_PRESET, PRESETS, audit_preset, build_attack, huang_eq3_for_defense, preset_config
from adversary.attacks.registry import ConfigError
from adversary.attacks.regularizers import REGULARIZERS
from adversary.attacks.runner import AttackResult, GradientInversion
from adversary.attacks.simulate import ClientSimulator
from adversary.attacks.threat_model import AttackInputs, Component, check_grants
from fl_sim.threat import Capability, ThreatModel, ThreatModelError

__all__ = [
    "ALPHA_BN",
    "AUDIT_PRESET",
    "audit_preset",
    "ALPHA_TV",
    "BN_STRATEGIES",
    "LABEL_STRATEGIES",
    "OBJECTIVES",
    "OPTIMIZERS",
    "PRESETS",
    "REGULARIZERS",
    "AttackInputs",
    "AttackResult",
    "Capability",
    "ClientSimulator",
    "Component",
    "ConfigError",
    "GradientInversion",
    "LabelGuess",
    "SearchPoint",
    "ThreatModel",
    "ThreatModelError",
    "allocate_counts",
    "batch_stats_from_running_update",
    "build_attack",
    "check_grants",
    "grid_search",
    "huang_eq3_for_defense",
    "infer_bn_from_update",
    "label_accuracy",
    "linear_combination_candidates",
    "optuna_search",
    "preset_config",
    "recover_single_image",
    "record_bn_stats",
]
