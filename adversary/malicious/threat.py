"""What a malicious server must control to run each manipulation.

``weights`` control: the server may send arbitrary parameter values for the agreed
architecture (trap weights, class fishing). ``architecture`` control: the server may also
choose the architecture the clients run, e.g. insert an imprint block (Robbing the Fed).
``public_data``: the server holds public data to estimate feature statistics (the imprint's
bin thresholds).
"""

from __future__ import annotations

from dataclasses import dataclass


class MaliciousServerError(ValueError):
    """A manipulation needs server control the threat model does not grant."""


@dataclass(frozen=True)
class ServerControl:
    """Control granted to the (malicious) server."""

    weights: bool = True
    architecture: bool = False
    public_data: bool = False


@dataclass(frozen=True)
class Requirement:
    """What one manipulation needs: control level and public statistics."""

    control: str  # "weights" or "architecture" ("architecture" implies "weights")
    public_statistics: tuple[str, ...] = ()
    note: str = ""


ATTACKS: dict[str, Requirement] = {
    "trap_weights": Requirement("weights", (), "first layer must be nn.Linear with bias"),
    "imprint": Requirement(
        "architecture",
        ("quantiles of the binning feature (e.g. mean brightness) from public data",),
        "inserts an ImprintBlock right after the input",
    ),
    "fishing": Requirement("weights", (), "last layer must be nn.Linear with bias"),
}


def require(control: ServerControl, attack: str) -> Requirement:
    """Return ``attack``'s requirement, or raise a one-line MaliciousServerError if not granted."""
    if attack not in ATTACKS:
        raise MaliciousServerError(f"unknown malicious-server attack {attack!r}; choose one of: {', '.join(sorted(ATTACKS))}")
    req = ATTACKS[attack]
    if not control.weights:
        raise MaliciousServerError(f"{attack} needs weights control (server sends chosen parameters); not granted")
    if req.control == "architecture" and not control.architecture:
        raise MaliciousServerError(f"{attack} needs architecture control (server inserts layers); only weights control granted")
    if req.public_statistics and not control.public_data:
        raise MaliciousServerError(f"{attack} needs public data for {req.public_statistics[0]}; not granted")
    return req
