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
from pydantic import BaseModel, ConfigDict, Field, ValidationError
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
    mean: tuple[float, ...] | None = None  # input normalisation inside fl-sim's models
    std: tuple[float, ...] | None = None

    def build(self) -> nn.Module:
        """The architecture at fixed initial weights (the traffic supplies the real ones).

        Built under a forked RNG so building it never moves the caller's random state."""
        if self.name is None:
            raise DeploymentCardError("deployment: the card names no fl-sim model (an audit's model is its factory)")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return build_model(self.name, self.input_shape, int(self.num_classes or 0), norm=self.norm, mean=self.mean,
                               std=self.std, **self.options)


class ClientRecipe(_Card):
    """The local training the server announces (or an audit states); None: not known, granted or assumed."""

    lr: float | None = None
    local_steps: int | None = None
    batch_size: int | None = None


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
    encoder: str | None = None  # the deployment's batch encoder (mixup, instahide)
    sign_center: tuple[float, ...] | None = None  # InstaHide: the per-channel value signs flip around
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
                    sign_center: tuple[float, ...] | None = None) -> DeploymentCard:
    """The card of one of fl-sim's own runs; ``encoder``/``sign_center`` come from the clients' defenses."""
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
        encoder=encoder,
        sign_center=sign_center,
        shared_keys=tuple(task.shared_keys(task.new_model())),
    )


def audit_card(*, factory: str | None = None, factory_root: str | None = None,
               input_shape: tuple[int, int, int] | None = None, update_kind: str = "weights") -> DeploymentCard:
    """The card of an audited app, from what the user states about it (its model and what clients send)."""
    model = None
    if factory is not None:
        if input_shape is None:
            raise DeploymentCardError("--input-shape: the model's input C,H,W is needed with --model")
        model = ModelCard(factory=factory, factory_root=factory_root, input_shape=input_shape)
    try:
        return DeploymentCard(origin="audit", model=model, update_kind=update_kind, reported_examples="dataset")
    except ValidationError as exc:
        raise DeploymentCardError(one_line(exc, prefix="deployment")) from None
