"""Typed, validated run configuration: TOML files plus ``--set key=value`` overrides.

Validation happens before anything is written, so a bad value never leaves a
half-made run directory behind. Every error is one line naming the key and what
is allowed (:class:`ConfigError`).
"""

from __future__ import annotations

import copy
import json
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializeAsAny,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from fl_sim.devices import check_device
from fl_sim.registry import Registry
from fl_sim.safe_paths import is_plain_name, output_folder_problem
from fl_sim.threat import ThreatSettings
from fl_sim.validation import one_line
from fl_sim.wire import steps_per_update, update_kind


class ConfigError(ValueError):
    """A user-facing configuration problem; its message is a single line."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)  # nan is no learning rate


class DataConfig(_Section):
    name: str = "mnist-5k"
    root: str | None = None
    partition: Literal["iid", "dirichlet"] = "iid"
    alpha: float = Field(0.5, gt=0)
    test_fraction: float = Field(0.2, gt=0, lt=1)
    image_size: int | None = Field(None, ge=8, le=1024)
    max_test: int | None = Field(1000, ge=1)
    max_train: int | None = Field(None, ge=1)


class ModelConfig(_Section):
    name: str = "convnet"
    norm: Literal["batch", "group", "none"] | None = None
    options: dict[str, int | float | str | bool] = Field(default_factory=dict)


class FederationConfig(_Section):
    num_clients: int = Field(4, ge=1, le=10_000)
    rounds: int = Field(3, ge=1, le=100_000)
    clients_per_round: int | None = Field(None, ge=1)
    protocol: Literal["fedsgd", "fedavg"] = "fedavg"
    local_steps: int = Field(1, ge=1, le=100_000)
    batch_size: int = Field(32, ge=1, le=65_536)
    lr: float = Field(0.05, gt=0, le=100)
    fedbn: bool = True
    upload: Literal["weights", "delta"] = "weights"
    secagg: bool = False  # Flower's SecAgg+ (legacy API); parameters in the [secagg] section
    # The deployment lets the server define the model each round (it ships the architecture, not
    # only weights): clients build what the instruction's ``architecture`` spec says. Off: they refuse.
    model_from_server: bool = False

    @model_validator(mode="after")
    def _participation(self) -> FederationConfig:
        if self.clients_per_round is not None and self.clients_per_round > self.num_clients:
            raise ValueError(
                f"federation.clients_per_round: must be <= federation.num_clients "
                f"({self.num_clients}), got {self.clients_per_round}"
            )
        if self.secagg and self.sampled_per_round < 2:
            raise ValueError(
                f"federation.secagg: secure aggregation needs at least 2 clients per round "
                f"(got {self.sampled_per_round})"
            )
        return self

    @property
    def sampled_per_round(self) -> int:
        return self.clients_per_round or self.num_clients

    @property
    def steps_per_update(self) -> int:
        return steps_per_update(self.protocol, self.local_steps)

    @property
    def examples_per_update(self) -> int:
        """The most examples one client's update covers (batch size x local steps)."""
        return self.batch_size * self.steps_per_update

    @property
    def update_kind(self) -> str:
        return update_kind(self.protocol, self.upload)


class SecAggConfig(_Section):
    """Flower's SecAgg+ (``flwr.server.workflow.SecAggPlusWorkflow``), used when ``federation.secagg``.

    ``num_shares``: an int (>= 3, at most the clients per round) is the number of shares each
    client's secrets are split into (its neighbours, itself included); a float in (0, 1] is that
    fraction of the round's clients. ``reconstruction_threshold``: shares needed to rebuild a secret,
    an int (>= 2, < num_shares) or a float in (0, 1] (fraction of num_shares). Each uploaded value,
    weighted by ``num_examples / max_weight`` (<= 1), is clipped to ``[-clipping_range,
    clipping_range]`` and stochastically quantized to ``quantization_range`` levels, so the sum the
    server recovers is exact up to about ``2 * clipping_range / quantization_range`` per value.
    ``max_weight`` defaults to the most examples a client can report (batch_size x local steps).
    """

    num_shares: int | float = 1.0
    reconstruction_threshold: int | float = 0.67
    clipping_range: float = Field(8.0, gt=0, le=1e6)
    quantization_range: int = Field(2**22, ge=2, le=2**30)
    modulus_range: int = Field(2**32, ge=4, le=2**32)
    max_weight: float | None = Field(None, gt=0)
    timeout: float | None = Field(None, gt=0)

    @field_validator("num_shares", "reconstruction_threshold", mode="before")
    @classmethod
    def _not_bool(cls, value: Any, info: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError(f"secagg.{info.field_name}: must be an int or a float (got {value!r})")
        return value

    @field_validator("num_shares")
    @classmethod
    def _num_shares(cls, value: int | float) -> int | float:
        if isinstance(value, int) and value < 3:
            raise ValueError(f"secagg.num_shares: as an int it must be >= 3 (got {value}); use a float in (0, 1] for a fraction")
        if isinstance(value, float) and not 0 < value <= 1:
            raise ValueError(f"secagg.num_shares: as a float it must be in (0, 1] (got {value})")
        return value

    @field_validator("reconstruction_threshold")
    @classmethod
    def _threshold(cls, value: int | float) -> int | float:
        if isinstance(value, int) and value < 2:
            raise ValueError(f"secagg.reconstruction_threshold: as an int it must be >= 2 (got {value})")
        if isinstance(value, float) and not 0 < value <= 1:
            raise ValueError(f"secagg.reconstruction_threshold: as a float it must be in (0, 1] (got {value})")
        return value

    @model_validator(mode="after")
    def _ranges(self) -> SecAggConfig:
        if isinstance(self.num_shares, int) and isinstance(self.reconstruction_threshold, int):
            if self.reconstruction_threshold >= self.num_shares:
                raise ValueError(
                    f"secagg.reconstruction_threshold: must be < secagg.num_shares ({self.num_shares}), "
                    f"got {self.reconstruction_threshold}"
                )
        if self.modulus_range & (self.modulus_range - 1):
            raise ValueError(f"secagg.modulus_range: must be a power of 2 (got {self.modulus_range})")
        if self.modulus_range <= self.quantization_range:
            raise ValueError(
                f"secagg.modulus_range: must be > secagg.quantization_range ({self.quantization_range}), "
                f"got {self.modulus_range}"
            )
        return self


class EngineConfig(_Section):
    name: Literal["ray", "inline"] = "ray"
    num_cpus_per_client: float = Field(1.0, gt=0)
    num_gpus_per_client: float = Field(0.0, ge=0)
    ray_address: str | None = None
    ray_num_cpus: int | None = Field(None, ge=1)


class EvalConfig(_Section):
    mode: Literal["auto", "server", "clients"] = "auto"
    batch_size: int = Field(256, ge=1)
    every: int = Field(1, ge=1)  # evaluate every k-th round (and always the last): evaluation can cost more than a FedSGD round


MESSAGE_TYPES = ("train", "evaluate", "query", "system")  # Flower's; an app may add ".action" suffixes


class TapConfig(_Section):
    """What the tap records. Every message's metadata (sizes, digests, norms, metrics) is always kept;
    the ``keep_*`` keys choose whose tensors are kept on disk as well (all must agree). The adversary
    still sees every message's tensors as it happens: those not kept stay readable for ``spool_rounds``
    rounds after their own, and are kept after all when an attack job names them."""

    enabled: bool = True
    ground_truth: bool = True
    keep_directions: list[Literal["down", "up"]] = Field(default_factory=lambda: ["down", "up"])
    keep_rounds: list[int] = Field(default_factory=list)  # empty: every round
    keep_every: int = Field(1, ge=1)  # rounds 1, 1+k, 1+2k, ...
    keep_message_types: list[str] = Field(default_factory=list)  # empty: every type
    keep_clients: float = Field(1.0, gt=0, le=1)  # a seeded sample of the clients, this fraction of them
    spool_rounds: int = Field(1, ge=0, le=1000)

    @field_validator("keep_message_types")
    @classmethod
    def _types(cls, value: list[str]) -> list[str]:
        for kind in value:
            if kind.split(".", 1)[0] not in MESSAGE_TYPES:
                raise ValueError(f"must name message types among {', '.join(MESSAGE_TYPES)} (or TYPE.action), got {kind!r}")
        return value

    @field_validator("keep_rounds")
    @classmethod
    def _rounds(cls, value: list[int]) -> list[int]:
        if any(r < 0 for r in value):
            raise ValueError(f"must list rounds >= 0, got {value}")
        return value

    @property
    def keeps_everything(self) -> bool:
        return (set(self.keep_directions) == {"down", "up"} and not self.keep_rounds and self.keep_every == 1
                and not self.keep_message_types and self.keep_clients == 1.0)


# Checks of an attack's settings (preset name and overrides) that the adversary registers here, so a
# bad ``adversary.attack`` fails when the config loads, not after training. Each raises ValueError (one line).
ATTACK_SETTINGS_CHECKS: list[Callable[[str, dict[str, Any]], None]] = []


class AdversaryConfig(_Section):
    """Who attacks during the run: a role (by name or ``module:Class``), its attack and its threat model."""

    role: str = "none"
    options: dict[str, Any] = Field(default_factory=dict)
    preset: str = "inverting-gradients"
    attack: dict[str, Any] = Field(default_factory=dict)
    threat: ThreatSettings = Field(default_factory=ThreatSettings)
    workers: int | None = Field(None, ge=1, le=64)  # default: one per GPU under Ray, else 1
    worker_cpus: float = Field(0.0, ge=0)
    wait: bool = True
    max_attacks: int | None = Field(None, ge=1)
    device: str = "auto"  # where attack workers optimise: auto (a worker's GPU, else the CPU), cpu, cuda, cuda:N

    @field_validator("device", mode="before")
    @classmethod
    def _device(cls, value: Any) -> Any:
        return check_device(value, "adversary.device")

    @field_validator("threat", mode="before")
    @classmethod
    def _threat(cls, value: Any) -> Any:
        if isinstance(value, dict):
            try:
                return ThreatSettings.model_validate(value)
            except ValidationError as exc:
                # The settings phrase their errors as threat_model.<key>; in a config that key is adversary.threat.<key>.
                line = one_line(exc, prefix="adversary.threat")
                raise ValueError(line.replace("adversary.threat.threat_model.", "adversary.threat.", 1)) from None
        return value

    @model_validator(mode="after")
    def _attack_settings(self) -> AdversaryConfig:
        if self.active:
            for check in ATTACK_SETTINGS_CHECKS:
                try:
                    check(self.preset, dict(self.attack))
                except ValueError as exc:
                    raise ValueError(_attack_key(str(exc).strip("'\""))) from None
        return self

    @property
    def active(self) -> bool:
        return self.role != "none"


def _attack_key(text: str) -> str:
    """An attack settings error under its config key: adversary.preset, adversary.attack.<key> or adversary.attack."""
    if text.startswith("unknown preset"):
        return f"adversary.preset: {text}"
    head, sep, rest = text.partition(": ")
    if sep and " " not in head:
        return f"adversary.attack.{head}: {rest}"
    return f"adversary.attack: {text}"


class DefenseParams(_Section):
    """Base of every client-side defense's typed parameters.

    Each defense in ``clients/defenses/`` subclasses this with ``name: Literal[...]``,
    its ``kind`` and its own fields, and registers it in :data:`DEFENSE_PARAMS`
    (``@register_defense`` does both this and the implementation). The ``defenses``
    list of :class:`RunConfig` dispatches each entry on ``name``.
    """

    kind: ClassVar[str] = "update"
    name: str
    # Which simulated clients (partition indices) apply it; None: every client. A deployment where
    # only some clients defend themselves is what the demo contrasts.
    partitions: list[int] | None = None

    @field_validator("partitions")
    @classmethod
    def _partitions(cls, value: list[int] | None) -> list[int] | None:
        if value is not None:
            if not value:
                raise ValueError("partitions: give at least one partition index, or leave it out for every client")
            if min(value) < 0:
                raise ValueError(f"partitions: indices must be >= 0, got {sorted(value)}")
            if cls.kind == "encoder":
                raise ValueError("partitions: a batch encoder is announced to the whole deployment (the attacker "
                                 "decodes with it); it applies to every client")
        return value

    def applies_to(self, partition: int) -> bool:
        return self.partitions is None or partition in self.partitions

    def label(self) -> str:
        """'gradprune p=0.99': the name and the settings that differ from their defaults."""
        fields = type(self).model_fields
        changed = [f"{k}={v}" for k, v in self.model_dump(exclude={"name", "partitions"}).items()
                   if fields[k].is_required() or v != fields[k].get_default(call_default_factory=True)]
        return " ".join([self.name, *changed])


DEFENSE_KINDS = {
    "encoder": "batch encoder (acts on the (x, y) batch before the local step)",
    "step": "gradient step (replaces how a batch's gradient is computed)",
    "update": "update transform (acts on the outgoing gradient/update)",
    "vet": "model vetting (inspects the received model before training)",
}
# Defense name -> its parameters (a DefenseParams subclass); filled by the defense packages.
DEFENSE_PARAMS = Registry("defense")


def parse_defenses(value: Any) -> list[DefenseParams]:
    """Validate the raw ``defenses`` list into typed parameter models (one line naming the key on error)."""
    if value is None:
        return []
    if not isinstance(value, (list, tuple)):
        raise ValueError(f'defenses: expected a list of tables like [{{name="gradprune", p=0.9}}], got {value!r}')
    out: list[DefenseParams] = []
    for i, entry in enumerate(value):
        key = f"defenses[{i}]"
        if isinstance(entry, DefenseParams):
            entry = entry.model_dump()
        if not isinstance(entry, dict):
            raise ValueError(f'{key}: expected a table like {{name="gradprune", p=0.9}}, got {entry!r}')
        name = entry.get("name")
        if name is None:
            raise ValueError(f"{key}.name: required; choose one of: {DEFENSE_PARAMS.choices()}")
        if name not in DEFENSE_PARAMS:
            raise ValueError(f"{key}.name: unknown defense {name!r}; choose one of: {DEFENSE_PARAMS.choices()}")
        try:
            out.append(DEFENSE_PARAMS[name].model_validate(entry))
        except ValidationError as exc:
            raise ValueError(one_line(exc, prefix=key)) from None
    _check_combination(out)
    return out


def _check_combination(chosen: list[DefenseParams]) -> None:
    seen: dict[str, int] = {}
    for i, params in enumerate(chosen):
        if params.name in seen:
            raise ValueError(f"defenses[{i}]: {params.name!r} is already listed at defenses[{seen[params.name]}]")
        seen[params.name] = i
    for kind in ("encoder", "step", "vet"):
        where = [(i, p.name) for i, p in enumerate(chosen) if p.kind == kind]
        if len(where) > 1:
            names = ", ".join(sorted(n for n, cls in DEFENSE_PARAMS.items() if cls.kind == kind))
            listed = " and ".join(f"{n} at defenses[{i}]" for i, n in where)
            raise ValueError(f"defenses: at most one {DEFENSE_KINDS[kind]} may be used ({names}); got {listed}")


class RunConfig(_Section):
    """The whole run; sections mirror the TOML tables."""

    seed: int = Field(0, ge=0, lt=2**31)
    name: str = "run"  # the run directory's name starts with it: a plain name, no path
    out_dir: str = "runs"

    @field_validator("name")
    @classmethod
    def _plain_name(cls, value: str) -> str:
        if not is_plain_name(value):
            raise ValueError(f"name: must be a plain name (letters, digits, '.', '_', '-'; no path, no leading dot), got {value!r}")
        return value

    @field_validator("out_dir")
    @classmethod
    def _out_dir(cls, value: str, info: ValidationInfo) -> str:
        if (info.context or {}).get("driver") is False:  # a client re-reading the run's config: the folder is the driver's
            return value
        problem = output_folder_problem(Path(value))
        if problem:
            raise ValueError(f"out_dir: {problem}")
        return value
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    federation: FederationConfig = Field(default_factory=FederationConfig)
    engine: EngineConfig = Field(default_factory=EngineConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    tap: TapConfig = Field(default_factory=TapConfig)
    adversary: AdversaryConfig = Field(default_factory=AdversaryConfig)
    secagg: SecAggConfig = Field(default_factory=SecAggConfig)
    defenses: list[SerializeAsAny[DefenseParams]] = Field(default_factory=list)

    @field_validator("defenses", mode="before")
    @classmethod
    def _defenses(cls, value: Any) -> list[DefenseParams]:
        return parse_defenses(value)

    @model_validator(mode="after")
    def _eval_every_fits_the_loop(self) -> RunConfig:
        if self.eval.every > 1 and self.federation.secagg:
            raise ValueError("eval.every: the SecAgg+ workflow evaluates every round; leave it at 1 with federation.secagg")
        return self

    @model_validator(mode="after")
    def _defense_partitions_exist(self) -> RunConfig:
        n = self.federation.num_clients
        for i, params in enumerate(self.defenses):
            if params.partitions is not None and max(params.partitions) >= n:
                raise ValueError(f"defenses[{i}].partitions: indices must be < federation.num_clients ({n}), "
                                 f"got {sorted(params.partitions)}")
        return self

    @model_validator(mode="after")
    def _secagg_fits_the_federation(self) -> RunConfig:
        if not self.federation.secagg:
            return self
        sampled, sa = self.federation.sampled_per_round, self.secagg
        if isinstance(sa.num_shares, int) and sa.num_shares > sampled:
            raise ValueError(
                f"secagg.num_shares: must be <= the clients per round ({sampled}), got {sa.num_shares}"
            )
        if isinstance(sa.reconstruction_threshold, int) and sa.reconstruction_threshold > sampled:
            raise ValueError(
                f"secagg.reconstruction_threshold: must be <= the clients per round ({sampled}), "
                f"got {sa.reconstruction_threshold}"
            )
        # The server adds the clients' quantized vectors (each value < quantization_range) mod modulus_range.
        if sampled * sa.quantization_range >= sa.modulus_range:
            raise ValueError(
                f"secagg.quantization_range: {sampled} clients x {sa.quantization_range} exceeds "
                f"secagg.modulus_range ({sa.modulus_range}); the masked sum would overflow"
            )
        most = self.federation.examples_per_update
        if sa.max_weight is not None and sa.max_weight < most:
            raise ValueError(
                f"secagg.max_weight: must be >= the most examples a client reports per round ({most}), "
                f"got {sa.max_weight}; larger weights overflow the quantization"
            )
        return self

    @property
    def secagg_max_weight(self) -> float:
        """SecAgg+'s ``max_weight``: the configured one, or the most examples a client reports per round."""
        if self.secagg.max_weight is not None:
            return float(self.secagg.max_weight)
        return float(self.federation.examples_per_update)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def updated(self, **sections: Any) -> RunConfig:
        """A validated copy with nested updates merged in (``federation={"rounds": 3}``)."""
        return build_config(deep_merge(self.to_dict(), sections))


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` merged into a copy of ``base``, nested dicts key by key (non-empty ones; an empty one replaces)."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and out[key]:
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _parse_value(raw: str) -> Any:
    """Parse an override value as TOML (numbers, booleans, strings, arrays)."""
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw  # a bare word is a string


def apply_override(tree: dict[str, Any], assignment: str) -> None:
    """Apply one ``a.b.c=value`` assignment to a nested dict."""
    key, sep, raw = assignment.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set: expected key=value, got {assignment!r}")
    parts = key.split(".")
    if any(not part.strip() for part in parts):
        raise ConfigError(f"--set: {key!r} is not a key; expected names joined by dots, such as federation.lr")
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{key}: '{part}' is a value, not a section")
        node = child
    node[parts[-1]] = _parse_value(raw.strip())


def build_config(tree: dict[str, Any], *, driver: bool = True) -> RunConfig:
    """``driver``: validated where the run is driven (its output folder checked); False for a process that
    only re-reads a config validated there (a client on another node, which never sees that folder)."""
    try:
        return RunConfig.model_validate(tree, context={"driver": driver})
    except ValidationError as exc:
        raise ConfigError(one_line(exc)) from None


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Read a TOML file (optional), apply overrides, validate."""
    tree: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"--config: file not found: {path}")
        try:
            tree = tomllib.loads(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError:
            raise ConfigError(f"--config: {path} is not a text file (not UTF-8); expected a TOML file") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"--config: {path} is not valid TOML ({exc})") from None
    for assignment in overrides:
        apply_override(tree, assignment)
    return build_config(tree)


def config_from_json(text: str, *, driver: bool = True) -> RunConfig:
    return build_config(json.loads(text), driver=driver)
