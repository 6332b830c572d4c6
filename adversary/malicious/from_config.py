"""A malicious-server strategy from a run config: what the deployment grants the server."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from torch import Tensor

from adversary.malicious.record import Manipulation, ServerAggregate
from adversary.malicious.server import ServerStrategy, ServerView, build_strategy
from adversary.malicious.threat import ServerControl
from fl_sim.config import RunConfig
from fl_sim.task import load_task


def server_control(config: RunConfig) -> ServerControl:
    """Weights always; the architecture only where the deployment lets the server ship the model;
    public data: the server's own evaluation split (or a named public dataset)."""
    return ServerControl(weights=True, architecture=config.federation.model_from_server, public_data=True)


def server_view(config: RunConfig) -> ServerView:
    task = load_task(config)
    fed = config.federation

    def public_images(name: str) -> Tensor:
        if name == "test":
            return task.test_split[0]
        from fl_sim.data import load_dataset

        ds = load_dataset(name, seed=config.seed, image_size=config.data.image_size)
        return ds.train_x

    steps = fed.local_steps if fed.protocol == "fedavg" else 1
    return ServerView(input_shape=task.dataset.input_shape, num_classes=task.dataset.num_classes,
                      batch_size=fed.batch_size, images_per_update=fed.batch_size * steps, public_images=public_images,
                      seed=config.seed)


def strategy_from_config(config: RunConfig) -> ServerStrategy:
    """Raises :class:`adversary.malicious.MaliciousServerError` (one line) when it cannot run here."""
    options = dict(config.adversary.options)
    if config.federation.secagg and options.get("strategy") == "imprint":
        options.setdefault("clients", config.federation.sampled_per_round)  # bins for the whole SecAgg sum
    return build_strategy(options, model=load_task(config).new_model(), view=server_view(config),
                          control=server_control(config))


def manipulation_from_config(config: RunConfig, run_dir: str | Path | None,
                             on_aggregate: Callable[[ServerAggregate], None] | None = None) -> Manipulation | None:
    if config.adversary.role != "malicious-server":
        return None
    return Manipulation(strategy_from_config(config), run_dir, on_aggregate)
