"""The app layer: the command line, simulation wiring, engines and audits, on top of everything else.

It is the only code that brings the clients, the server, the adversary and the experiments
together; nothing below imports it. Starting it keeps Flower and Ray on loopback: the network
guard is applied here, before any app module imports either package (they read some of its
switches when first imported).
"""

from app.netguard import apply_offline_env as _apply_offline_env

_apply_offline_env()
