"""Attack methods by name: the optimisation presets and the malicious server's recoveries, in one registry.

Each method declares the capabilities it needs (:class:`fl_sim.threat.Capability`:
passive knowledge and active control alike), how its reconstructions are matched to
the originals before any metric, and runs on what the attacker holds (an
:class:`adversary.observation.Observation` and its granted
:class:`adversary.attacks.AttackInputs`), never on the ground truth.

- ``dlg``, ``idlg``, ``inverting-gradients``, ``huang-eq3``, ``gradinversion``:
  optimisation (:mod:`.optimization`), the presets of :mod:`adversary.attacks.presets`;
- ``trap-weights``, ``imprint``, ``fishing``: what a malicious server recovers from the
  replies to the model it sent (:mod:`.recoveries`).
"""

from adversary.methods import optimization, recoveries  # noqa: F401  (register the methods)
from adversary.methods.base import METHODS, AttackMethod, Reconstruction, build_method

__all__ = ["METHODS", "AttackMethod", "Reconstruction", "build_method"]
