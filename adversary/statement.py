"""What a user states about an audited app: its model, its input normalisation, its clients' recipe.

A foreign app's traffic shows the weights and the updates, not how the client computes them. The
user states the rest (``--model``, ``--input-shape``, ``--input-mean``/``--input-std`` or
``--input-transform``, ``--recipe``, ``--update-kind``), and ``--client-data`` grants the attacked
client's data for scoring and the recipe check. The statement becomes the audit's deployment card;
every option is checked before anything runs, under its own name: the model is built and run once on
the stated input shape.

Code comes only from the command line. A run directory records the factory, the transform and the
app root its audit was given, but a shared directory may have been edited: attacking it imports
what it names only when the user names the same code again (``--model``, ``--input-transform``,
``--app-root``) or passes ``--trust-run`` (:meth:`AuditStatement.vouch`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from adversary.observation import ObservationError, build_model, load_factory
from fl_sim.deployment import DeploymentCard, DeploymentCardError, ModelCard, parse_recipe

OPTION_OF = {"factory": "--model", "input_shape": "--input-shape", "mean": "--input-mean", "std": "--input-std",
             "transform": "--input-transform"}


@dataclass(frozen=True)
class AuditStatement:
    factory: str | None = None  # module:attr building the app's model
    input_shape: tuple[int, int, int] | None = None
    mean: tuple[float, ...] | None = None  # the normalisation the app applies in its data pipeline
    std: tuple[float, ...] | None = None
    transform: str | None = None  # ... or a differentiable module:fn doing it
    update_kind: str | None = None  # what clients send: weights (Flower's default), delta or gradient
    recipe: dict[str, Any] = field(default_factory=dict)  # --recipe key=value statements
    client_data: str | None = None  # module:fn(partition, num_partitions) -> images or (images, labels)
    root: str | None = None  # the app directory its modules are imported from
    trust_run: bool = False  # import the code a run directory names (--trust-run)

    def vouch(self, recorded: DeploymentCard) -> list[str]:
        """Refuse, in one line, to import code that only the run directory names; notes on what is not used."""
        model = recorded.model
        if self.trust_run or model is None:
            return []
        for ref, stated, option in ((model.factory, self.factory, "--model"), (model.transform, self.transform, "--input-transform")):
            if ref and not stated:
                root = f" from {model.factory_root}" if model.factory_root else ""
                again = f"{option} {ref}" + (f" --app-root {model.factory_root}" if model.factory_root and not self.root else "")
                raise DeploymentCardError(f"{option}: this run names {ref!r}{root}; fl-sim imports no code on a run "
                                          f"directory's say-so: pass {again}, or --trust-run")
        if model.factory_root and not self.root:
            return [f"the run's app root {model.factory_root} is not searched for modules; pass --app-root "
                    f"{model.factory_root} to import from it (or --trust-run)"]
        return []

    def card(self, base: DeploymentCard | None = None) -> DeploymentCard:
        """``base`` (the audit's card on disk, or a fresh one) with what is stated on top."""
        base = base or DeploymentCard(origin="audit", reported_examples="dataset")
        stated = {k: v for k, v in {"factory": self.factory, "input_shape": self.input_shape, "mean": self.mean,
                                    "std": self.std, "transform": self.transform}.items() if v is not None}
        if stated and base.model is not None and base.model.name is not None:
            raise DeploymentCardError(f"{OPTION_OF[next(iter(stated))]}: this run's model is fl-sim's "
                                      f"{base.model.name!r}, whose input normalisation the run already records; "
                                      "state a model only for an audited app")
        model = {**(base.model.model_dump() if base.model is not None else {}), **stated} if stated else {}
        if model:  # modules are imported from the stated root; a recorded one only when trusted
            model["factory_root"] = self.root if self.root is not None or not self.trust_run else model.get("factory_root")
        if (self.mean is None) != (self.std is None):
            raise DeploymentCardError("--input-mean/--input-std: state both (one value, or one per channel)")
        if self.transform is not None and self.mean is not None:
            raise DeploymentCardError("--input-transform: give either a transform or --input-mean/--input-std, not both")
        updates: dict[str, Any] = {}
        if model:
            if not model.get("factory"):
                raise DeploymentCardError("--model: name the app's model factory (module:factory) to state its input")
            if not model.get("input_shape"):
                raise DeploymentCardError("--input-shape: the model's input C,H,W is needed with --model")
            updates["model"] = ModelCard.model_validate(model)
        if self.update_kind is not None:
            updates["update_kind"] = self.update_kind
        if self.recipe:
            updates["recipe"] = parse_recipe(self.recipe, base.recipe)
        if not updates:
            return base
        try:
            return DeploymentCard.model_validate({**base.model_dump(), **{k: v.model_dump() if hasattr(v, "model_dump") else v
                                                                          for k, v in updates.items()}})
        except ValueError as exc:
            raise DeploymentCardError(str(exc).splitlines()[0]) from None

    def check(self, card: DeploymentCard) -> None:
        """Import and run what the statement names, before anything else runs (ObservationError, one line)."""
        if card.model is not None and card.model.factory is not None:
            model = build_model(card.model)
            shape = card.model.input_shape
            try:
                with torch.no_grad():
                    model.eval()(torch.zeros(2, *shape))
            except Exception as exc:  # the user's model can fail on a wrong shape in any way
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise ObservationError(f"--input-shape: the model {card.model.factory} does not take "
                                       f"{'x'.join(map(str, shape))} inputs ({type(exc).__name__}: {first[:200]})") from None
        if self.client_data is not None:
            load_factory(self.client_data, self.root or (card.model.factory_root if card.model else None), option="--client-data")
