"""A malicious server as a wrapper of the honest strategy, as Flower's DP wrappers wrap a strategy.

It implements :class:`fl_sim.rounds.RoundStrategy` around the honest one. In the rounds
its strategy manipulates, it sends the strategy's broadcast instead of the global model
(recorded in the run directory), keeps the global model as it was (the replies answer
its own model), and, where it sees only the round's unmasked mean (secure aggregation),
records that mean and hands it to the adversary. In honest rounds it lets the honest
strategy aggregate and shows its strategy what it learns: the round's mean gradient per
local step, ``(w_before - w_after) / (lr * steps)``. Neither loop knows it is there.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from torch import Tensor, nn

from adversary.malicious.record import ManipulationLog
from adversary.malicious.server import Broadcast, ServerStrategy, ServerView, build_strategy, server_threat_model
from adversary.roles.base import ServerAggregate
from fl_sim.config import RunConfig
from fl_sim.data import load_dataset
from fl_sim.rounds import RoundPlan, RoundStrategy, RoundUpdate
from fl_sim.task import load_task
from fl_sim.wire import BATCH_SIZE, LOCAL_STEPS, LR


class MaliciousServer:
    """``inner`` with ``strategy``'s manipulations; ``model`` is the server's copy of the architecture."""

    def __init__(self, inner: RoundStrategy, strategy: ServerStrategy, model: nn.Module, run_dir: str | Path | None,
                 on_aggregate: Callable[[ServerAggregate], None] | None = None) -> None:
        self.inner = inner
        self.strategy = strategy
        self.model = model
        self.log = ManipulationLog(run_dir) if run_dir is not None else None
        self.on_aggregate = on_aggregate
        self.sent: dict[int, Broadcast] = {}
        self._announced: dict[int, dict] = {}

    def _honest_model(self, state: dict[str, Tensor]) -> nn.Module:
        self.model.load_state_dict(state, strict=False)
        return self.model

    def _broadcast(self, rnd: int) -> Broadcast | None:
        if rnd not in self.sent:
            out = self.strategy.broadcast(rnd, self._honest_model(self.inner.global_state()))
            if out is None:
                return None
            self.sent[rnd] = out
            if self.log is not None:
                self.log.record(rnd, self.strategy.name, out)
        return self.sent[rnd]

    def configure_train(self, rnd: int) -> RoundPlan:
        plan = self.inner.configure_train(rnd)
        self._announced[rnd] = dict(plan.config)
        broadcast = self._broadcast(rnd)
        if broadcast is None:
            return plan
        own = set(self.model.state_dict())
        keys = [*plan.tensors, *(k for k in broadcast.state if k not in own)]  # agreed tensors, then an inserted block's
        return RoundPlan({k: broadcast.state[k] for k in keys}, {**plan.config, **broadcast.config})

    def aggregate_train(self, update: RoundUpdate) -> None:
        if update.round in self.sent:
            if not update.visible_replies and update.num_examples > 0:
                self._record_aggregate(update)
            return
        before = self.inner.global_state()
        self.inner.aggregate_train(update)
        if update.num_examples > 0:
            self._observe_honest(update.round, before, self.inner.global_state())

    def _record_aggregate(self, update: RoundUpdate) -> None:
        """The server's unmasked mean of a manipulated round (secure aggregation): all it can attack."""
        if self.log is None:
            return
        agg = self.log.record_aggregate(update.round, dict(update.mean), list(update.nodes), update.num_examples,
                                        update.protocol)
        if self.on_aggregate is not None:
            self.on_aggregate(agg)

    def _observe_honest(self, rnd: int, before: dict[str, Tensor], after: dict[str, Tensor]) -> None:
        hook = getattr(self.strategy, "observe", None)
        if hook is None:
            return
        announced = self._announced.get(rnd, {})
        lr, steps = float(announced[LR]), int(announced[LOCAL_STEPS])
        gradient = {k: (before[k].double() - v.double()) / (lr * steps) for k, v in after.items() if v.is_floating_point()}
        hook(rnd, self._honest_model(before), gradient, int(announced[BATCH_SIZE]))

    def configure_evaluate(self, rnd: int) -> RoundPlan | None:
        return self.inner.configure_evaluate(rnd)

    def global_state(self) -> dict[str, Tensor]:
        return self.inner.global_state()

    def evaluate_global(self) -> tuple[float, float]:
        return self.inner.evaluate_global()


def server_view(config: RunConfig) -> ServerView:
    """What the server knows when it builds a strategy: the task it runs, its evaluation split, public sets."""
    task = load_task(config)
    fed = config.federation

    def public_images(name: str) -> Tensor:
        if name == "test":
            return task.test_split[0]
        return load_dataset(name, seed=config.seed, image_size=config.data.image_size).train_x

    return ServerView(input_shape=task.dataset.input_shape, num_classes=task.dataset.num_classes,
                      batch_size=fed.batch_size, images_per_update=fed.examples_per_update, public_images=public_images,
                      seed=config.seed)


def strategy_from_config(config: RunConfig) -> ServerStrategy:
    """Raises :class:`adversary.malicious.server.MaliciousServerError` (one line) when it cannot run here."""
    options = dict(config.adversary.options)
    if config.federation.secagg and options.get("strategy") == "imprint":
        options.setdefault("clients", config.federation.sampled_per_round)  # bins for the whole SecAgg sum
    return build_strategy(options, model=load_task(config).new_model(), view=server_view(config),
                          threat_model=server_threat_model(architecture=config.federation.model_from_server))


def malicious_server(config: RunConfig, inner: RoundStrategy, run_dir: str | Path | None,
                     on_aggregate: Callable[[ServerAggregate], None] | None = None) -> MaliciousServer:
    """The configured malicious server around ``inner``."""
    return MaliciousServer(inner, strategy_from_config(config), load_task(config).new_model(), run_dir, on_aggregate)
