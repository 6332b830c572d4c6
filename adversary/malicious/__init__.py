"""Malicious-server model manipulations (pure PyTorch, no Flower/Ray).

* :mod:`trap_weights` -- Boenisch et al. 2023, "When the Curious Abandon Honesty": trap weights
  on the first Linear layer so most units fire for a single image; exact recovery per unit.
* :mod:`imprint` -- Fowl et al. 2022, "Robbing the Fed": an inserted imprint block binning
  images by a linear feature; consecutive-bin gradient differences isolate single images,
  also through a secure-aggregation SUM of client gradients.
* :mod:`fishing` -- Wen et al. 2022, class fishing: last-layer edit so one class dominates.
* :mod:`threat` -- what server control / public statistics each manipulation needs.

In the federation (these import Flower-free code only, but need a run directory):

* :mod:`server` -- the strategies a malicious server runs in its loop (what it broadcasts);
* :mod:`record` -- what it sent and the SecAgg aggregates it saw, on disk;
* :mod:`recovery` -- images from the replies (or aggregates), scored against the ground truth;
* :mod:`detection` -- how the clients' vetting defense fared;
* :mod:`from_config` -- a strategy from a run config and the control the deployment grants.
"""

from adversary.malicious.fishing import fish, target_gradient_share
from adversary.malicious.imprint import ImprintBlock, ImprintedModel, brightness_thresholds, recover_from_imprint
from adversary.malicious.threat import ATTACKS, MaliciousServerError, Requirement, ServerControl, require
from adversary.malicious.trap_weights import TrapRecovery, first_linear_layer, recover_from_trap, trap_weights_

__all__ = [
    "ATTACKS",
    "ImprintBlock",
    "ImprintedModel",
    "MaliciousServerError",
    "Requirement",
    "ServerControl",
    "TrapRecovery",
    "brightness_thresholds",
    "first_linear_layer",
    "fish",
    "recover_from_imprint",
    "recover_from_trap",
    "require",
    "target_gradient_share",
    "trap_weights_",
]
