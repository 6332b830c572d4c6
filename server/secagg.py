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

:class:`SecAggStrategy` adapts the run's :class:`fl_sim.rounds.RoundStrategy` (the same
one the Message-API loop drives) to Flower's legacy Strategy API: it hands the recovered
mean to the strategy, which applies the protocol's rule (:mod:`server.aggregation`), and
does the same bookkeeping (:mod:`server.rounds`: sampling, server-side or client-side
evaluation, ``metrics.jsonl`` rows, final weights).

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

import numpy as np
import torch
from flwr.app import Context
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
from fl_sim.rounds import RoundStrategy, RoundUpdate
from fl_sim.wire import COMPUTE_S, SERVER_ROUND, TRAIN_LOSS
from server.rounds import ClientFailure, RoundLog, RoundStats, TrainingResult, check_node_ids, mean_eval, mean_train_loss, sample_clients


@dataclass
class _Round:
    start: float
    sampled: list[int]
    aggregated: bool = False
    train_loss: float = float("nan")
    compute_s: float = 0.0
    clients: int = 0
    eval_start: float = 0.0
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)  # the tensors sent for training, in wire order


def _parameters(state: dict[str, torch.Tensor]) -> Parameters:
    return ndarrays_to_parameters([v.detach().cpu().numpy() for v in state.values()])


class SecAggStrategy(Strategy):
    """Legacy strategy for :class:`SecAggPlusWorkflow` driving a :class:`fl_sim.rounds.RoundStrategy`."""

    def __init__(self, config: RunConfig, strategy: RoundStrategy, log: RoundLog, node_timeout: float = 120.0) -> None:
        self.config = config
        self.strategy = strategy
        self.log = log
        self.node_timeout = node_timeout
        self._rounds: dict[int, _Round] = {}

    # -- helpers ------------------------------------------------------------
    def _proxies(self, client_manager: ClientManager) -> dict[int, ClientProxy]:
        expected = self.config.federation.num_clients
        deadline = time.monotonic() + self.node_timeout
        while client_manager.num_available() < expected and time.monotonic() < deadline:
            time.sleep(0.1)
        proxies = {int(p.node_id): p for p in client_manager.all().values()}
        if len(proxies) < expected:
            raise RuntimeError(f"only {len(proxies)} of {expected} client nodes registered")
        check_node_ids(self.config, proxies)
        return proxies

    def _check_aggregated(self, rnd: int) -> _Round:
        state = self._rounds.get(rnd)
        if state is None or not state.aggregated:
            raise ClientFailure(f"secure aggregation halted in round {rnd} (see Flower's log above)")
        return state

    def _finish_round(self, rnd: int, loss: float, acc: float, eval_s: float) -> None:
        state = self._check_aggregated(rnd)
        self.log.record(RoundStats(
            round=rnd,
            clients=state.clients,
            train_loss=state.train_loss,
            eval_loss=loss,
            eval_acc=acc,
            wall_s=time.perf_counter() - state.start,
            client_compute_s=state.compute_s,
            eval_s=eval_s,
        ))

    # -- Strategy ---------------------------------------------------------------
    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        return _parameters(self.strategy.global_state())

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        start = time.perf_counter()
        proxies = self._proxies(client_manager)
        sampled = sample_clients(self.config.seed, server_round, list(proxies), self.config.federation.sampled_per_round)
        plan = self.strategy.configure_train(server_round)  # a malicious server may send other tensors (in order)
        self._rounds[server_round] = _Round(start=start, sampled=sampled,
                                            shapes={k: tuple(v.shape) for k, v in plan.tensors.items()})
        fit_ins = FitIns(_parameters(plan.tensors), dict(plan.config))
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
        mean: dict[str, torch.Tensor] = {}
        for _, res in results if total else ():
            arrays = parameters_to_ndarrays(res.parameters)
            if len(arrays) != len(state.shapes):
                raise ClientFailure(f"expected {len(state.shapes)} aggregated tensors, got {len(arrays)}")
            weight = res.num_examples / total
            for (key, shape), array in zip(state.shapes.items(), arrays):
                term = torch.from_numpy(np.asarray(array, dtype=np.float64)).reshape(shape) * weight
                mean[key] = mean[key] + term if key in mean else term
        # The server learns only the unmasked mean (a malicious one attacks it).
        self.strategy.aggregate_train(RoundUpdate(server_round, mean, total, tuple(state.sampled),
                                                  self.config.federation.protocol, visible_replies=False))
        state.aggregated = True
        state.clients = len(results)
        state.train_loss = mean_train_loss((float(res.metrics[TRAIN_LOSS]), res.num_examples) for _, res in results)
        state.compute_s = sum(float(res.metrics[COMPUTE_S]) for _, res in results) if total else 0.0
        return _parameters(self.strategy.global_state()), ({TRAIN_LOSS: state.train_loss} if total else {})

    def evaluate(self, server_round: int, parameters: Parameters) -> tuple[float, dict[str, Scalar]] | None:
        if server_round == 0:
            return None  # the Message-API loop does not evaluate the initial model either
        self._check_aggregated(server_round)
        if self.strategy.configure_evaluate(server_round) is not None:
            return None
        start = time.perf_counter()
        loss, acc = self.strategy.evaluate_global()
        self._finish_round(server_round, loss, acc, time.perf_counter() - start)
        return loss, {"accuracy": acc}

    def configure_evaluate(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, EvaluateIns]]:
        plan = self.strategy.configure_evaluate(server_round)
        if plan is None:
            return []
        self._rounds[server_round].eval_start = time.perf_counter()
        proxies = self._proxies(client_manager)
        ins = EvaluateIns(_parameters(plan.tensors), {SERVER_ROUND: server_round})
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
        loss, acc = mean_eval((res.metrics, res.num_examples) for _, res in results)
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


def run_secagg_rounds(config: RunConfig, grid: Grid, context: Context, strategy: RoundStrategy, run_dir: Path | None,
                      console: Console | None = None) -> TrainingResult:
    """All rounds under SecAgg+ on ``grid`` (tapped or not); returns what the Message-API loop would."""
    log = RoundLog(config, run_dir, console)
    legacy = SecAggStrategy(config, strategy, log)
    context = LegacyContext(context, config=ServerConfig(num_rounds=config.federation.rounds), strategy=legacy)
    DefaultWorkflow(fit_workflow=secagg_workflow(config))(grid, context)
    if len(log.result.rounds) != config.federation.rounds:
        raise ClientFailure(
            f"secure aggregation finished {len(log.result.rounds)} of {config.federation.rounds} rounds"
        )
    return log.finish(strategy.global_state())
