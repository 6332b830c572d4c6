"""Secure aggregation: our protocols run through Flower's legacy SecAgg+ workflow.

Flower 1.41 has SecAgg+ only in its legacy API, so with ``federation.secagg`` the
ServerApp runs ``DefaultWorkflow(fit_workflow=SecAggPlusWorkflow(...))`` on a
``LegacyContext`` whose strategy is :class:`SecAggStrategy`. Per round:

1. ``setup``: the server sends the SecAgg+ parameters, clients answer with two public keys;
2. ``share_keys``: the server forwards the keys, clients answer with encrypted key shares;
3. ``collect_masked_vectors``: the server forwards the shares plus the fit instruction
   (global model, round config); each client trains (:mod:`clients.secagg`), weights its
   update by ``num_examples / max_weight``, clips it to ``[-clipping_range, clipping_range]``,
   quantizes it to ``quantization_range`` levels and adds pairwise and private masks mod
   ``modulus_range``; it uploads only those int64 vectors;
4. ``unmask``: clients send the shares that remove the masks of the survivors; the server
   recovers the weighted mean of the updates, and only that reaches
   :meth:`SecAggStrategy.aggregate_fit`.

The strategy applies the same rules as the Message-API loop (:mod:`server.strategies`):
FedSGD ``w - lr * mean(g)`` (shared buffers averaged), FedAvg the mean of the weights
or ``w + mean(delta)``, and does the same bookkeeping (server-side or client-side
evaluation, ``metrics.jsonl`` rows, final weights) through :class:`server.loop.FederatedLoop`.

Precision: stochastic quantization with step ``2 * clipping_range / quantization_range``
on the weighted values; each recovered mean entry is within about that step of the
plain mean (values beyond the clipping range are clipped). Gradients (FedSGD) and
deltas are small, weights may not be: pick ``clipping_range`` to cover the largest
uploaded value and no larger than needed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, Context, RecordDict
from flwr.common import (
    EvaluateIns,
    EvaluateRes,
    FitIns,
    FitRes,
    Parameters,
    Scalar,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.server import LegacyContext, ServerConfig
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import Strategy
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
from flwr.serverapp import Grid
from rich.console import Console

from fl_sim.config import RunConfig
from server.loop import ClientFailure, FederatedLoop, RoundStats, TrainingResult
from server.strategies import Reply, aggregate


@dataclass
class _Round:
    start: float
    sampled: list[int]
    aggregated: bool = False
    train_loss: float = float("nan")
    compute_s: float = 0.0
    clients: int = 0
    eval_start: float = 0.0
    extra: dict[str, float] = field(default_factory=dict)
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)  # the tensors sent for training, in wire order


class SecAggStrategy(Strategy):
    """Legacy strategy for :class:`SecAggPlusWorkflow` implementing our FedSGD/FedAvg rules."""

    def __init__(self, config: RunConfig, loop: FederatedLoop, node_timeout: float = 120.0) -> None:
        self.config = config
        self.loop = loop
        self.keys = list(loop.shared_keys)
        self.param_keys = {k for k, _ in loop.model.named_parameters()}
        self.result = TrainingResult()
        self.eval_on_clients = loop.task.eval_on_clients(loop.model)
        self.node_timeout = node_timeout
        self._rounds: dict[int, _Round] = {}

    # -- helpers ------------------------------------------------------------
    def _parameters(self) -> Parameters:
        return ndarrays_to_parameters([self.loop.state[k].detach().cpu().numpy() for k in self.keys])

    def _proxies(self, client_manager: ClientManager) -> dict[int, ClientProxy]:
        expected = self.config.federation.num_clients
        deadline = time.monotonic() + self.node_timeout
        while client_manager.num_available() < expected and time.monotonic() < deadline:
            time.sleep(0.1)
        proxies = {int(p.node_id): p for p in client_manager.all().values()}
        if len(proxies) < expected:
            raise RuntimeError(f"only {len(proxies)} of {expected} client nodes registered")
        return proxies

    def _check_aggregated(self, rnd: int) -> _Round:
        state = self._rounds.get(rnd)
        if state is None or not state.aggregated:
            raise ClientFailure(f"secure aggregation halted in round {rnd} (see Flower's log above)")
        return state

    def _finish_round(self, rnd: int, loss: float, acc: float, eval_s: float) -> None:
        state = self._check_aggregated(rnd)
        stats = RoundStats(
            round=rnd,
            clients=state.clients,
            train_loss=state.train_loss,
            eval_loss=loss,
            eval_acc=acc,
            wall_s=time.perf_counter() - state.start,
            client_compute_s=state.compute_s,
            eval_s=eval_s,
        )
        self.loop.record_round(stats, self.result)

    # -- Strategy ---------------------------------------------------------------
    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        return self._parameters()

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        start = time.perf_counter()
        proxies = self._proxies(client_manager)
        nodes = sorted(proxies)
        fed = self.config.federation
        # The same draw as FederatedLoop.run, so both paths train the same clients.
        rng = np.random.default_rng([self.config.seed, server_round])
        picked = rng.choice(len(nodes), size=fed.sampled_per_round, replace=False)
        sampled = sorted(nodes[i] for i in picked)
        # A malicious server may send other tensors (and an inserted block's, appended in order).
        sent, extra = self.loop.sent_state(server_round, "train")
        self._rounds[server_round] = _Round(start=start, sampled=sampled, shapes={k: tuple(v.shape) for k, v in sent.items()})
        parameters = ndarrays_to_parameters([v.detach().cpu().numpy() for v in sent.values()])
        fit_ins = FitIns(parameters, {**self.loop.round_config(server_round), **extra})
        return [(proxies[node], fit_ins) for node in sampled]

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list[tuple[ClientProxy, FitRes] | BaseException],
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        state = self._rounds[server_round]
        if failures:
            first = failures[0]
            reason = first if isinstance(first, BaseException) else first[1].status.message
            raise ClientFailure(f"{len(failures)} client(s) failed in round {server_round}: {reason}")
        if len(results) < len(state.sampled):
            raise ClientFailure(f"only {len(results)} of {len(state.sampled)} clients answered")
        # Under SecAgg+ every result carries the same recovered weighted mean; averaging
        # them again by num_examples changes nothing (and keeps the plain legacy fit
        # workflow, where each result is one client's update, correct too).
        total = sum(res.num_examples for _, res in results)
        if total == 0:  # every client refused the round: the model stays
            state.aggregated, state.clients, state.train_loss = True, len(results), float("nan")
            return self._parameters(), {}
        mean: dict[str, torch.Tensor] = {}
        for _, res in results:
            arrays = parameters_to_ndarrays(res.parameters)
            if len(arrays) != len(state.shapes):
                raise ClientFailure(f"expected {len(state.shapes)} aggregated tensors, got {len(arrays)}")
            weight = res.num_examples / total
            for (key, shape), array in zip(state.shapes.items(), arrays):
                term = torch.from_numpy(np.asarray(array, dtype=np.float64)).reshape(shape) * weight
                mean[key] = mean[key] + term if key in mean else term
        if self.loop.manipulation is not None:  # the server learns the unmasked mean: a malicious one attacks it
            self.loop.manipulation.aggregated(server_round, dict(mean), state.sampled, total, self.config.federation.protocol)
        mean = {k: v for k, v in mean.items() if k in self.loop.state}
        for key, value in mean.items():
            if not self.loop.state[key].is_floating_point():
                mean[key] = value.round()  # e.g. num_batches_tracked, shared without FedBN
        content = RecordDict()
        if self.config.federation.protocol == "fedsgd":
            content["arrays"] = ArrayRecord({k: v for k, v in mean.items() if k in self.param_keys})
            buffers = {k: v for k, v in mean.items() if k not in self.param_keys}
            if buffers:
                content["buffers"] = ArrayRecord(buffers)
        else:
            content["arrays"] = ArrayRecord(mean)
        if not self.loop.manipulated(server_round):
            before = self.loop.state
            self.loop.state = aggregate(self.loop.state, [Reply(content, 1)], self.config.federation)
            self.loop.observe_honest_round(server_round, before)
        state.aggregated = True
        state.clients = len(results)
        state.train_loss = sum(float(res.metrics["train-loss"]) * res.num_examples for _, res in results) / total
        state.compute_s = sum(float(res.metrics["compute-s"]) for _, res in results)
        return self._parameters(), {"train-loss": state.train_loss}

    def evaluate(self, server_round: int, parameters: Parameters) -> tuple[float, dict[str, Scalar]] | None:
        if server_round == 0:
            return None  # the Message-API loop does not evaluate the initial model either
        self._check_aggregated(server_round)
        if self.eval_on_clients:
            return None
        start = time.perf_counter()
        loss, acc = self.loop.evaluate_global()
        self._finish_round(server_round, loss, acc, time.perf_counter() - start)
        return loss, {"accuracy": acc}

    def configure_evaluate(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, EvaluateIns]]:
        if not self.eval_on_clients:
            return []
        self._rounds[server_round].eval_start = time.perf_counter()
        proxies = self._proxies(client_manager)
        ins = EvaluateIns(self._parameters(), {"server-round": server_round})
        return [(proxies[node], ins) for node in sorted(proxies)]

    def aggregate_evaluate(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, EvaluateRes]],
        failures: list[tuple[ClientProxy, EvaluateRes] | BaseException],
    ) -> tuple[float | None, dict[str, Scalar]]:
        expected = self.config.federation.num_clients
        if failures or len(results) < expected:
            raise ClientFailure(f"evaluation in round {server_round}: {len(results)} of {expected} clients answered")
        total = sum(res.num_examples for _, res in results)
        loss = sum(float(res.metrics["eval-loss"]) * res.num_examples for _, res in results) / total
        acc = sum(float(res.metrics["eval-acc"]) * res.num_examples for _, res in results) / total
        eval_s = time.perf_counter() - self._rounds[server_round].eval_start
        self._finish_round(server_round, loss, acc, eval_s)
        return loss, {"accuracy": acc}


def secagg_workflow(config: RunConfig) -> SecAggPlusWorkflow:
    sa = config.secagg
    return SecAggPlusWorkflow(
        num_shares=sa.num_shares,
        reconstruction_threshold=sa.reconstruction_threshold,
        max_weight=config.secagg_max_weight,
        clipping_range=float(sa.clipping_range),
        quantization_range=int(sa.quantization_range),
        modulus_range=int(sa.modulus_range),
        timeout=sa.timeout,
    )


def run_secagg(
    config: RunConfig, run_dir: Path | None, grid: Grid, context: Context, console: Console | None = None,
    manipulation: Any = None,
) -> TrainingResult:
    """All rounds under SecAgg+ on ``grid`` (tapped or not); returns what FederatedLoop.run would.

    ``manipulation``: a malicious server's strategy (:class:`adversary.malicious.record.Manipulation`)."""
    loop = FederatedLoop(config, run_dir, console=console, manipulation=manipulation)
    strategy = SecAggStrategy(config, loop)
    legacy = LegacyContext(context, config=ServerConfig(num_rounds=config.federation.rounds), strategy=strategy)
    DefaultWorkflow(fit_workflow=secagg_workflow(config))(grid, legacy)
    if len(strategy.result.rounds) != config.federation.rounds:
        raise ClientFailure(
            f"secure aggregation finished {len(strategy.result.rounds)} of {config.federation.rounds} rounds"
        )
    return loop.finish(strategy.result)
