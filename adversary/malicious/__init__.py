"""Malicious-server model manipulations (pure PyTorch, no Flower/Ray).

* :mod:`trap_weights` -- Boenisch et al. 2023, "When the Curious Abandon Honesty": trap weights
  on the first Linear layer so most units fire for a single image; exact recovery per unit.
* :mod:`imprint` -- Fowl et al. 2022, "Robbing the Fed": an inserted imprint block binning
  images by a linear feature; consecutive-bin gradient differences isolate single images,
  also through a secure-aggregation SUM of client gradients.
* :mod:`fishing` -- Wen et al. 2022, class fishing: last-layer edit so one class dominates.

In the federation (these import Flower-free code only, but need a run directory):

* :mod:`server` -- the strategies a malicious server runs in its loop (what it broadcasts), each
  declaring the control it needs (:class:`fl_sim.threat.Capability`);
* :mod:`wrapper` -- the malicious server as a wrapper of the honest round strategy;
* :mod:`record` -- what it sent and the SecAgg aggregates it saw, on disk;
* :mod:`detection` -- how the clients' vetting defense fared.

The recoveries (images from the replies or aggregates) are attack methods:
:mod:`adversary.methods.recoveries`.
"""

from adversary.malicious.fishing import fish, target_gradient_share
from adversary.malicious.imprint import ImprintBlock, ImprintedModel, brightness_thresholds, recover_from_imprint
from adversary.malicious.trap_weights import TrapRecovery, first_linear_layer, recover_from_trap, trap_weights_

__all__ = [
    "ImprintBlock",
    "ImprintedModel",
    "TrapRecovery",
    "brightness_thresholds",
    "first_linear_layer",
    "fish",
    "recover_from_imprint",
    "recover_from_trap",
    "target_gradient_share",
    "trap_weights_",
]
