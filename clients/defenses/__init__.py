"""Client-side defenses against gradient inversion (Huang et al. 2021, Section 4).

Configured as a list, e.g. in TOML::

    [[defenses]]
    name = "instahide"
    k = 4
    [[defenses]]
    name = "gradprune"
    p = 0.9

or ``--set 'defenses=[{name="mixup", k=4}, {name="dp", noise_multiplier=1.0, clip=1.0}]'``.

Registered defenses (one module each): ``gradprune`` (update transform),
``mixup`` and ``instahide`` (batch encoders), ``dp`` (gradient step), ``vetting``
(model vetting). See
:mod:`clients.defenses.base` for the hook interfaces.
"""

from clients.defenses import dp, gradprune, instahide, mixup, vetting  # noqa: F401  (register the defenses)
from clients.defenses.base import (
    BatchEncoder,
    BuildContext,
    Defense,
    Defenses,
    EncodeContext,
    GradientStep,
    ModelVetter,
    RoundContext,
    RoundDefenses,
    UpdateTransform,
    VetContext,
    VetReport,
    build_defenses,
    generator_for,
)
from clients.defenses.encoding import public_encoding
from clients.defenses.registry import available_defenses, register_defense, registered

__all__ = [
    "BatchEncoder",
    "BuildContext",
    "Defense",
    "Defenses",
    "EncodeContext",
    "GradientStep",
    "ModelVetter",
    "RoundContext",
    "RoundDefenses",
    "UpdateTransform",
    "VetContext",
    "VetReport",
    "available_defenses",
    "build_defenses",
    "generator_for",
    "public_encoding",
    "register_defense",
    "registered",
]
