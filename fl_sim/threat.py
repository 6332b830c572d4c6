"""Threat models: what an attacker is granted, in one vocabulary of capabilities.

A capability is a piece of knowledge or control an attack relies on: passive
knowledge beyond the traffic (the private labels, the private batch's BatchNorm
statistics, the client's local hyperparameters, MixUp/InstaHide keys) and active
control of the server (the weights it sends, the architecture it ships) with the
public data a server may hold. Every attack component, optimisation preset and
malicious-server recovery declares the capabilities it needs from this one set,
and an attack is refused before it runs when the threat model does not grant one.

Named threat models give the literature's attackers their usual grants; any
field can be overridden on top (``adversary.threat = {name = "realistic",
labels = "infer"}``). Values the traffic reveals (the number of images a client
reports, the hyperparameters the server announces) are filled in from the
observation, not from the name.
"""

from __future__ import annotations

import enum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from fl_sim.validation import one_line

LABELS = ("known", "infer", "unknown")
BN_STATS = ("exact", "proxy", "infer", "none")
CONTROLS = ("none", "weights", "architecture")

Labels = Literal["known", "infer", "unknown"]
BNStats = Literal["exact", "proxy", "infer", "none"]
Control = Literal["none", "weights", "architecture"]


class ThreatModelError(ValueError):
    """An attack needs knowledge or control the threat model does not grant; one line."""


class Capability(enum.Enum):
    """A piece of knowledge or control a component relies on."""

    KNOWN_LABELS = "known_labels"
    BN_EXACT = "bn_exact"
    BN_PROXY = "bn_proxy"
    NUM_IMAGES = "num_images"
    LOCAL_HYPERPARAMS = "local_hyperparams"
    MIXING_KEYS = "mixing_keys"
    WEIGHTS_CONTROL = "weights_control"
    ARCHITECTURE_CONTROL = "architecture_control"
    PUBLIC_DATA = "public_data"


def _choice(field: str, value: Any, choices: tuple[str, ...]) -> Any:
    if value is not None and value not in choices:
        raise ValueError(f"threat_model.{field}: {value!r} is not one of {', '.join(choices)}")
    return value


class _Grants(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @field_validator("labels", "bn_stats", "control", mode="before", check_fields=False)
    @classmethod
    def _choices(cls, value: Any, info: Any) -> Any:
        return _choice(info.field_name, value, {"labels": LABELS, "bn_stats": BN_STATS, "control": CONTROLS}[info.field_name])

    @field_validator("local_steps", mode="before", check_fields=False)
    @classmethod
    def _steps(cls, value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool) and value < 1:
            raise ValueError(f"threat_model.local_steps: must be >= 1, got {value}")
        return value


class ThreatModel(_Grants):
    """Knowledge and control granted to the attacker (the paper's Table 1 assumptions and beyond)."""

    name: str | None = None
    labels: Labels = "unknown"
    bn_stats: BNStats = "none"
    num_images: int | None = Field(None, ge=1)
    local_steps: int = 1
    local_lr: float | None = Field(None, gt=0)
    local_batch_size: int | None = Field(None, ge=1)
    mixing_keys: bool = False
    control: Control = "none"
    public_data: bool = False

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise ThreatModelError(one_line(exc, prefix="threat_model")) from None

    def grants(self, capability: Capability) -> bool:
        return _GRANTED[capability](self)

    @staticmethod
    def grant_for(capability: Capability) -> str:
        """The grant to ask for, as the user would write it."""
        return _GRANT_TEXT[capability]


_GRANTED = {
    Capability.KNOWN_LABELS: lambda t: t.labels == "known",
    Capability.BN_EXACT: lambda t: t.bn_stats == "exact",
    Capability.BN_PROXY: lambda t: t.bn_stats in ("exact", "proxy"),
    Capability.NUM_IMAGES: lambda t: t.num_images is not None,
    Capability.LOCAL_HYPERPARAMS: lambda t: t.local_lr is not None and t.local_batch_size is not None,
    Capability.MIXING_KEYS: lambda t: t.mixing_keys,
    Capability.WEIGHTS_CONTROL: lambda t: t.control in ("weights", "architecture"),
    Capability.ARCHITECTURE_CONTROL: lambda t: t.control == "architecture",
    Capability.PUBLIC_DATA: lambda t: t.public_data,
}
_GRANT_TEXT = {
    Capability.KNOWN_LABELS: "threat_model.labels='known'",
    Capability.BN_EXACT: "threat_model.bn_stats='exact'",
    Capability.BN_PROXY: "threat_model.bn_stats='proxy'",
    Capability.NUM_IMAGES: "threat_model.num_images",
    Capability.LOCAL_HYPERPARAMS: "threat_model.local_lr and local_batch_size",
    Capability.MIXING_KEYS: "threat_model.mixing_keys=True",
    Capability.WEIGHTS_CONTROL: "weights control (threat_model.control='weights': the server sends chosen parameters)",
    Capability.ARCHITECTURE_CONTROL: "architecture control (threat_model.control='architecture': the server ships the model)",
    Capability.PUBLIC_DATA: "public data (threat_model.public_data=True)",
}


# The literature's attackers. Each grants knowledge and control; what the traffic reveals
# (num_images, local hyperparameters) is filled in from the observation.
NAMED_THREAT_MODELS: dict[str, dict[str, Any]] = {
    # Huang et al. 2021, Table 2: the private labels and the private batch's BatchNorm statistics known.
    "strongest": {"labels": "known", "bn_stats": "exact"},
    # Huang et al. 2021, Table 5: labels known, BatchNorm statistics not.
    "realistic": {"labels": "known", "bn_stats": "none"},
    # A passive attacker on a link: the traffic and the public deployment, nothing else.
    "eavesdropper": {"labels": "unknown", "bn_stats": "none"},
    # An eavesdropper that also knows (or has guessed) the private labels, as Geiping et al. assume.
    "informed-eavesdropper": {"labels": "known", "bn_stats": "none"},
    # The server as the protocol runs it: every update and what it announces; no control, no private data.
    "honest-but-curious-server": {"labels": "unknown", "bn_stats": "none"},
    # A server that sends weights of its choosing and holds public data (Boenisch et al.; Wen et al.);
    # where the deployment lets it ship the model, it chooses the architecture too (Fowl et al.).
    "malicious-server": {"labels": "unknown", "bn_stats": "none", "control": "weights", "public_data": True},
    "malicious-server-architecture": {"labels": "unknown", "bn_stats": "none", "control": "architecture",
                                      "public_data": True},
    # A participant: the global models it receives and its own data, no control over others.
    "malicious-client": {"labels": "unknown", "bn_stats": "none"},
}
DEFAULT_THREAT_MODEL = "strongest"


class ThreatSettings(_Grants):
    """What a config or the command line chooses: a named threat model and/or single grants.

    Unset fields (None) come from the name, else from what the observation reveals
    and the default grants (:func:`resolve_threat_model`).
    """

    name: str | None = None
    labels: Labels | None = None
    bn_stats: BNStats | None = None
    num_images: int | None = None
    local_steps: int | None = None
    local_lr: float | None = None
    local_batch_size: int | None = None
    mixing_keys: bool | None = None
    control: Control | None = None
    public_data: bool | None = None

    @field_validator("name")
    @classmethod
    def _known_name(cls, value: str | None) -> str | None:
        if value is not None and value not in NAMED_THREAT_MODELS:
            raise ValueError(f"threat_model.name: unknown threat model {value!r}; choose one of: {', '.join(NAMED_THREAT_MODELS)}")
        return value

    @field_validator("num_images", "local_batch_size")
    @classmethod
    def _positive(cls, value: int | None, info: Any) -> int | None:
        if value is not None and value < 1:
            raise ValueError(f"threat_model.{info.field_name}: must be >= 1, got {value}")
        return value

    @field_validator("local_lr")
    @classmethod
    def _lr(cls, value: float | None) -> float | None:
        if value is not None and not value > 0:
            raise ValueError(f"threat_model.local_lr: must be > 0, got {value}")
        return value

    def chosen(self) -> dict[str, Any]:
        """Only what was set, as it was written (the job book keeps this)."""
        return self.model_dump(exclude_none=True)


THREAT_KEYS = tuple(ThreatSettings.model_fields)


def threat_settings(choices: dict[str, Any] | ThreatSettings | None) -> ThreatSettings:
    """Validate choices as ``threat.<key>`` settings; raises ThreatModelError (one line)."""
    if isinstance(choices, ThreatSettings):
        return choices
    try:
        return ThreatSettings.model_validate(choices or {})
    except ValidationError as exc:
        raise ThreatModelError(one_line(exc, prefix="threat")) from None


def resolve_threat_model(defaults: dict[str, Any], choices: dict[str, Any] | ThreatSettings | None) -> ThreatModel:
    """The complete threat model: ``defaults`` (what the observation reveals and the default
    grants), then the named model's grants, then the single choices."""
    settings = threat_settings(choices)
    values = dict(defaults)
    if settings.name is not None:
        values.update(NAMED_THREAT_MODELS[settings.name], name=settings.name)
    values.update({k: v for k, v in settings.chosen().items() if k != "name"})
    return ThreatModel(**values)
