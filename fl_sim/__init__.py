"""fl-sim: federated learning simulation with an eavesdropping adversary."""

from fl_sim.netguard import apply_offline_env as _apply_offline_env

_apply_offline_env()

__version__ = "0.1.0"
