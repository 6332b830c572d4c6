"""The public deployment card: what anyone who sees the deployment knows about it.

Breaching's boundary between the case and the attack: the attacker holds the
payload (the traffic) and what is shared (this card), never the private data.
Each run writes its card into the run directory before it starts
(``deployment.json``); an audit writes the card the user states for their app.
The attacker rebuilds the model from it, reads the protocol and the update kind
from it and from the traffic, and never loads a dataset.

What the card holds, and why it is public:

- the architecture (model name, options, input shape, classes) and the input
  normalisation inside the model: the server ships it to every client;
- the protocol (FedSGD / FedAvg), the kind of update clients send, whether
  BatchNorm stays local (FedBN), secure aggregation, and whether the server may
  define the architecture: the protocol every participant runs;
- the client recipe the server announces (learning rate, local steps, batch size);
- the batch encoder (MixUp / InstaHide) and the centre its signs flip around,
  where the protocol makes them public (the keys themselves never are);
- the order of the shared tensors, which legacy (positional) messages follow.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from torch import nn

from fl_sim.config import RunConfig
from fl_sim.models import build_model
from fl_sim.task import Task
from fl_sim.validation import one_line

DEPLOYMENT_JSON = "deployment.json"
CARD_VERSION = 1


class DeploymentCardError(ValueError):
    """A missing or unreadable deployment card; one line."""


class _Card(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelCard(_Card):
    """How to rebuild the agreed architecture: an fl-sim model by name, or an audited app's factory."""

    name: str | None = None  # fl-sim's model registry
    norm: str | None = None
    options: dict[str, int | float | str | bool] = Field(default_factory=dict)
    factory: str | None = None  # an audited app's ``module:attr`` (named on the command line)
    factory_root: str | None = None  # the app directory its module is imported from
    input_shape: tuple[int, int, int]
    num_classes: int | None = None  # audits: read off the model's last Linear layer
    # The input normalisation: inside fl-sim's models; in an audited app's data pipeline (mean/std per
    # channel, or ``transform``, a differentiable ``module:fn``), put in front of its model by the attacker.
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    transform: str | None = None

    def build(self) -> nn.Module:
        """The architecture at fixed initial weights (the traffic supplies the real ones).

        Built under a forked RNG so building it never moves the caller's random state."""
        if self.name is None:
            raise DeploymentCardError("deployment: the card names no fl-sim model (an audit's model is its factory)")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return build_model(self.name, self.input_shape, int(self.num_classes or 0), norm=self.norm, mean=self.mean,
                               std=self.std, **self.options)


OPTIMIZERS = ("sgd", "adam", "adamw")


class ClientRecipe(_Card):
    """The client's local training: what the server announces, or what an audit states about its app.

    The optimiser as PyTorch defines it (SGD with momentum, dampening, Nesterov and weight decay;
    Adam and AdamW with betas, eps and weight decay), the learning rate, and how the client walks its
    data: a fixed number of ``local_steps``, or ``epochs`` over it in batches of ``batch_size``
    (``drop_last`` as a DataLoader's, at most ``max_steps`` steps per update). None: not known.
    ``stated``: the keys an audit's user stated (the others are assumed defaults).
    """

    optimizer: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: float | None = Field(None, gt=0)
    momentum: float = Field(0.0, ge=0)
    dampening: float = Field(0.0, ge=0, le=1)
    nesterov: bool = False
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = Field(1e-8, gt=0)
    local_steps: int | None = Field(None, ge=1)
    epochs: int | None = Field(None, ge=1)
    batch_size: int | None = Field(None, ge=1)
    drop_last: bool = False
    max_steps: int | None = Field(None, ge=1)
    stated: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _consistent(self) -> ClientRecipe:
        if self.nesterov and (self.momentum <= 0 or self.dampening != 0):
            raise ValueError("--recipe.nesterov: needs momentum > 0 and dampening = 0 (as torch.optim.SGD)")
        if not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"--recipe.betas: each must be in [0, 1), got {self.betas}")
        if self.optimizer != "sgd" and (self.momentum or self.nesterov or self.dampening):
            raise ValueError(f"--recipe.momentum: {self.optimizer} has betas, not momentum/dampening/nesterov")
        return self

    def steps_for(self, num_images: int) -> int:
        """Local steps behind one update over ``num_images`` images (fixed, or epochs in batches)."""
        if self.epochs is None or self.batch_size is None:
            return self.local_steps or 1
        per_epoch = num_images // self.batch_size if self.drop_last else -(-num_images // self.batch_size)
        steps = max(per_epoch, 0) * self.epochs
        return min(steps, self.max_steps) if self.max_steps else steps

    def images_for(self, dataset_size: int) -> int:
        """Distinct images one update uses when a client walks a dataset of ``dataset_size`` images in order."""
        if self.batch_size is None:
            return dataset_size
        used = dataset_size
        if self.max_steps is not None:
            used = min(used, self.max_steps * self.batch_size)
        if self.drop_last:
            used -= used % self.batch_size
        return used


RECIPE_KEYS = tuple(k for k in ClientRecipe.model_fields if k != "stated")


def parse_recipe(assignments: dict[str, Any], base: ClientRecipe | None = None) -> ClientRecipe:
    """A recipe from ``key=value`` statements (``--recipe``) over ``base``; one line naming the key on error."""
    unknown = sorted(set(assignments) - set(RECIPE_KEYS))
    if unknown:
        raise DeploymentCardError(f"--recipe: unknown key {unknown[0]!r}; choose from: {', '.join(RECIPE_KEYS)}")
    data = {**(base.model_dump() if base is not None else {}), **assignments}
    data["stated"] = tuple(sorted({*(base.stated if base is not None else ()), *assignments}))
    try:
        return ClientRecipe.model_validate(data)
    except ValidationError as exc:
        raise DeploymentCardError(one_line(exc, prefix="--recipe")) from None


class DeploymentCard(_Card):
    version: int = CARD_VERSION
    origin: Literal["simulation", "audit"] = "simulation"
    model: ModelCard | None = None  # None: an audit whose model was not named yet
    protocol: Literal["fedsgd", "fedavg"] | None = None  # None: an audited app's protocol is not known
    upload: Literal["weights", "delta"] = "weights"
    update_kind: Literal["gradient", "delta", "weights"] = "weights"
    fedbn: bool = False
    secagg: bool = False
    model_from_server: bool = False
    recipe: ClientRecipe = Field(default_factory=ClientRecipe)
    defenses: tuple[str, ...] = ()  # the clients' defenses, by name (the protocol the deployment announces)
    encoder: str | None = None  # the deployment's batch encoder (mixup, instahide)
    sign_center: tuple[float, ...] | None = None  # InstaHide: the per-channel value signs flip around
    encoder_k: int | None = Field(None, ge=2)  # images per mix (None: a card written before it was recorded)
    encoder_max_coeff: float | None = Field(None, gt=0, le=1)  # the largest mixing coefficient the protocol allows
    encoder_variant: Literal["intra", "inter"] | None = None  # InstaHide: partners private (intra) or public (inter)
    shared_keys: tuple[str, ...] = ()  # wire order of the global tensors (empty: the model's state_dict order)
    # What a reply's num-examples counts: the examples behind the update (fl-sim's clients) or the
    # client's dataset (what Flower's example apps report), which reveals no batch size.
    reported_examples: Literal["update", "dataset"] = "update"

    def write(self, run_dir: str | Path) -> Path:
        path = Path(run_dir) / DEPLOYMENT_JSON
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.model_dump(mode="json"), indent=2, sort_keys=True))
        os.replace(tmp, path)
        return path

    def with_updates(self, **fields: Any) -> DeploymentCard:
        """A validated copy (``model`` / ``recipe`` updates are merged into theirs)."""
        data = self.model_dump()
        for key, value in fields.items():
            data[key] = {**(data[key] or {}), **value} if key in ("model", "recipe") and isinstance(value, dict) else value
        try:
            return DeploymentCard.model_validate(data)
        except ValidationError as exc:
            raise DeploymentCardError(one_line(exc, prefix="deployment")) from None


def load_card(run_dir: str | Path) -> DeploymentCard:
    path = Path(run_dir) / DEPLOYMENT_JSON
    if not path.is_file():
        raise DeploymentCardError(f"RUN_DIR: {run_dir} has no deployment card ({DEPLOYMENT_JSON}); "
                                  "it was made by an older fl-sim: re-run it with fl-sim run --config RUN_DIR/config.toml")
    try:
        return DeploymentCard.model_validate(json.loads(path.read_text()))
    except (ValueError, UnicodeDecodeError) as exc:
        detail = one_line(exc, prefix="deployment") if isinstance(exc, ValidationError) else type(exc).__name__
        raise DeploymentCardError(f"RUN_DIR: {path} is not a valid deployment card ({detail})") from None


def simulation_card(config: RunConfig, task: Task, *, encoder: str | None = None,
                    sign_center: tuple[float, ...] | None = None, encoder_k: int | None = None,
                    encoder_max_coeff: float | None = None, encoder_variant: str | None = None) -> DeploymentCard:
    """The card of one of fl-sim's own runs; the encoder's public side (name, k, largest coefficient,
    variant, sign centre) comes from the clients' defenses."""
    fed, data = config.federation, task.dataset
    return DeploymentCard(
        origin="simulation",
        model=ModelCard(name=config.model.name, norm=config.model.norm, options=dict(config.model.options),
                        input_shape=data.input_shape, num_classes=data.num_classes, mean=data.mean, std=data.std),
        protocol=fed.protocol,
        upload=fed.upload,
        update_kind=fed.update_kind,
        fedbn=fed.fedbn,
        secagg=fed.secagg,
        model_from_server=fed.model_from_server,
        recipe=ClientRecipe(lr=fed.lr, local_steps=fed.steps_per_update, batch_size=fed.batch_size),
        defenses=tuple(d.name for d in config.defenses),
        encoder=encoder,
        sign_center=sign_center,
        encoder_k=encoder_k,
        encoder_max_coeff=encoder_max_coeff,
        encoder_variant=encoder_variant,
        shared_keys=tuple(task.shared_keys(task.new_model())),
    )
