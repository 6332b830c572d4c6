"""The ClientApp: local training on a private partition, FedBN state kept at home.

Message contract (Flower Message API):
- ``train`` in: ``arrays`` (shared global tensors), ``config`` (server-round, ...).
  out: ``arrays`` (FedSGD: gradients; FedAvg: weights or delta), optional
  ``buffers`` (FedSGD without FedBN: running statistics), ``metrics``.
- ``evaluate`` in: ``arrays``; out: ``metrics`` (eval-loss, eval-acc, num-examples).

Tensors listed by :meth:`fl_sim.task.Task.local_keys` never enter a reply; they
persist across rounds in ``context.state``.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from torch import nn

from adversary.ground_truth import record_private_batch
from clients.training import LocalResult, evaluate, fedavg_steps, fedsgd_step, sample_batches
from fl_sim.config import RunConfig
from fl_sim.task import Task, load_task

LOCAL_STATE = "fl-sim-local"


def _to_record(tensors: dict[str, torch.Tensor]) -> ArrayRecord:
    return ArrayRecord({k: v.detach().cpu().contiguous() for k, v in tensors.items()})


def _keep_local(task: Task, model: nn.Module, context: Context) -> None:
    local = task.local_keys(model)
    if local:
        sd = model.state_dict()
        context.state[LOCAL_STATE] = _to_record({k: sd[k] for k in local})


class ClientRuntime:
    """Per-process client machinery; one instance serves every node of that process."""

    def __init__(self, config: RunConfig, run_dir: Path | None) -> None:
        self.config = config
        self.run_dir = run_dir
        self.task = load_task(config)
        self.model = self.task.new_model()
        self.initial = {k: v.clone() for k, v in self.model.state_dict().items()}
        if os.environ.get("FL_SIM_WORKER_THREADS"):
            torch.set_num_threads(int(os.environ["FL_SIM_WORKER_THREADS"]))

    def _fresh_model(self, message: Message, context: Context) -> nn.Module:
        """Initial weights, overlaid by this client's private state, then the global tensors."""
        state = dict(self.initial)
        if LOCAL_STATE in context.state:
            state.update(context.state[LOCAL_STATE].to_torch_state_dict())
        state.update(message.content["arrays"].to_torch_state_dict())
        self.model.load_state_dict(state)
        return self.model

    def train(self, message: Message, context: Context) -> Message:
        cfg = self.config.federation
        rnd = int(message.content["config"]["server-round"])
        partition = int(context.node_config["partition-id"])
        data = self.task.dataset
        model = self._fresh_model(message, context)
        local_keys = self.task.local_keys(model)
        steps = 1 if cfg.protocol == "fedsgd" else cfg.local_steps
        batches = [
            (data.train_x[idx], data.train_y[idx], idx)
            for idx in sample_batches(
                self.task.partitions[partition],
                steps=steps,
                batch_size=cfg.batch_size,
                seed=self.config.seed,
                round=rnd,
                partition=partition,
            )
        ]
        content = RecordDict()
        if cfg.protocol == "fedsgd":
            x, y, idx = batches[0]
            result, grads = fedsgd_step(model, x, y, idx, lr=cfg.lr, local_params=local_keys)
            content["arrays"] = _to_record(grads)
            buffers = {k: v for k, v in model.state_dict().items() if k in set(self.task.shared_keys(model)) and k not in grads}
            if buffers:
                content["buffers"] = _to_record(buffers)
        else:
            received = message.content["arrays"].to_torch_state_dict()
            result = fedavg_steps(model, batches, lr=cfg.lr)
            sd = model.state_dict()
            shared = {k: sd[k] for k in self.task.shared_keys(model)}
            if cfg.upload == "delta":
                shared = {k: v - received[k] for k, v in shared.items()}
            content["arrays"] = _to_record(shared)
        content["metrics"] = MetricRecord(
            {"num-examples": result.num_examples, "train-loss": result.loss, "compute-s": result.compute_s}
        )
        _keep_local(self.task, model, context)
        self._record_ground_truth(message, context, partition, rnd, result)
        return Message(content=content, reply_to=message)

    def evaluate(self, message: Message, context: Context) -> Message:
        model = self._fresh_model(message, context)
        x, y = self.task.test_split
        loss, acc = evaluate(model, x, y, self.config.eval.batch_size)
        metrics = MetricRecord({"eval-loss": loss, "eval-acc": acc, "num-examples": len(y)})
        return Message(content=RecordDict({"metrics": metrics}), reply_to=message)

    def _record_ground_truth(self, message: Message, context: Context, partition: int, rnd: int, result: LocalResult) -> None:
        if self.run_dir is None or not self.config.tap.ground_truth:
            return
        record_private_batch(
            self.run_dir,
            instruction_id=message.metadata.message_id,
            node_id=context.node_id,
            partition_id=partition,
            round=rnd,
            steps=[s.as_arrays() for s in result.steps],
            extra={"protocol": self.config.federation.protocol, "lr": self.config.federation.lr},
        )


_RUNTIMES: dict[str, ClientRuntime] = {}


def _runtime(config: RunConfig, run_dir: Path | None) -> ClientRuntime:
    key = config.model_dump_json() + str(run_dir)
    if key not in _RUNTIMES:
        _RUNTIMES.clear()
        _RUNTIMES[key] = ClientRuntime(config, run_dir)
    return _RUNTIMES[key]


def make_client_app(config: RunConfig, run_dir: str | Path | None) -> ClientApp:
    """A ClientApp bound to a run; picklable, so Ray actors can rebuild it."""
    run_path = Path(run_dir).resolve() if run_dir is not None else None
    app = ClientApp()

    @app.train()
    def train(message: Message, context: Context) -> Message:
        return _runtime(config, run_path).train(message, context)

    @app.evaluate()
    def evaluate_(message: Message, context: Context) -> Message:
        return _runtime(config, run_path).evaluate(message, context)

    return app
