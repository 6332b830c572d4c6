"""The client's machinery, one per process: the task, the model, the defenses, local training.

It serves every node of its process: the Message-API ClientApp (:mod:`clients.app`) and
the SecAgg+ one (:mod:`clients.secagg`) both turn an instruction into a round of local
training here (:meth:`ClientRuntime.train_content`), so batches, defenses, FedBN state
and the ground-truth record are the same under both.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from torch import nn

from clients.defenses import EncodeContext, RoundContext, RoundDefenses, VetContext, VetReport, build_defenses
from clients.training import LocalResult, fedavg_steps, fedsgd_step, sample_batches
from fl_sim.config import RunConfig
from fl_sim.devices import apply_worker_threads
from fl_sim.ground_truth import GroundTruthSink, PrivateBatch
from fl_sim.models.server_defined import ARCHITECTURE_KEY, apply_architecture
from fl_sim.task import Task, evaluate_model, load_task
from fl_sim.wire import (
    ARRAYS,
    BUFFERS,
    COMPUTE_S,
    CONFIG,
    DEFENSE_S,
    EVAL_ACC,
    EVAL_LOSS,
    METRICS,
    NUM_EXAMPLES,
    SERVER_ROUND,
    TRAIN_LOSS,
)

LOCAL_STATE = "fl-sim-local"
LAST_RECEIVED = "fl-sim-last-received"  # the agreed tensors received last time (vetting compares)


class ArchitectureRefused(RuntimeError):
    """The server asked for an architecture this deployment does not let it define."""


def _to_record(tensors: dict[str, torch.Tensor]) -> ArrayRecord:
    return ArrayRecord({k: v.detach().cpu().contiguous() for k, v in tensors.items()})


def _keep_local(task: Task, model: nn.Module, context: Context) -> None:
    local = task.local_keys(model)
    if local:
        sd = model.state_dict()
        context.state[LOCAL_STATE] = _to_record({k: sd[k] for k in local})


class ClientRuntime:
    """Per-process client machinery; one instance serves every node of that process."""

    def __init__(self, config: RunConfig, truth: GroundTruthSink | None) -> None:
        self.config = config
        self.truth = truth
        self.task = load_task(config)
        self.model = self.task.new_model()
        self.initial = {k: v.clone() for k, v in self.model.state_dict().items()}
        self.defenses = build_defenses(
            config, input_shape=self.task.dataset.input_shape, num_classes=self.task.dataset.num_classes, model=self.model
        )
        apply_worker_threads()

    def _fresh_model(self, received: dict[str, torch.Tensor], context: Context) -> nn.Module:
        """Initial weights, overlaid by this client's private state, then the global tensors."""
        state = dict(self.initial)
        if LOCAL_STATE in context.state:
            state.update(context.state[LOCAL_STATE].to_torch_state_dict())
        state.update(received)
        self.model.load_state_dict(state)
        return self.model

    def train(self, message: Message, context: Context) -> Message:
        config = dict(message.content[CONFIG])
        content = self.train_content(
            message.content[ARRAYS].to_torch_state_dict(),
            int(config[SERVER_ROUND]),
            context,
            instruction_id=message.metadata.message_id,
            server_config=config,
        )
        return Message(content=content, reply_to=message)

    def _server_defined(self, model: nn.Module, spec: str | None, extra: dict[str, torch.Tensor]) -> nn.Module:
        """The model with the server's inserted block and its weights, where the deployment allows it."""
        if not self.config.federation.model_from_server:
            what = "an architecture change" if spec else f"unknown tensors {sorted(extra)[:3]}"
            raise ArchitectureRefused(f"the server sent {what}; this deployment does not let the server define "
                                      "the model (federation.model_from_server = false)")
        if not spec:
            raise ArchitectureRefused(f"the server sent tensors outside the model {sorted(extra)[:3]} without an architecture")
        built = apply_architecture(model, spec, self.task.dataset.input_shape)
        built.load_state_dict({**built.state_dict(), **extra})
        return built

    def _vet(self, defenses: RoundDefenses, model: nn.Module, received: dict[str, torch.Tensor], spec: str | None,
             rnd: int, partition: int, context: Context) -> VetReport | None:
        if defenses.defenses.vetter is None:
            return None
        own = {k: v for k, v in received.items() if k in self.initial}
        previous = context.state[LAST_RECEIVED].to_torch_state_dict() if LAST_RECEIVED in context.state else None
        params = defenses.defenses.vetter.params
        pool = self.task.partitions[partition]
        probe = self.task.dataset.train_x[np.asarray(pool[: params.probe_images])]
        report = defenses.vet(VetContext(round=rnd, model=model, received=dict(received), agreed_keys=frozenset(self.initial),
                                         architecture=spec, previous=previous, probe=probe))
        context.state[LAST_RECEIVED] = _to_record(own)
        return report

    def _refusal(self, model: nn.Module, received: dict[str, torch.Tensor], report: VetReport, defenses: RoundDefenses) -> RecordDict:
        """A reply that contributes nothing: zero examples, zero gradient / unchanged weights."""
        cfg = self.config.federation
        shared = [k for k in self.task.shared_keys(model) if k in received]
        content = RecordDict()
        if cfg.protocol == "fedsgd":
            params = dict(model.named_parameters())
            content[ARRAYS] = _to_record({k: torch.zeros_like(params[k]) for k in shared if k in params})
            buffers = {k: received[k] for k in shared if k not in params}
            if buffers:
                content[BUFFERS] = _to_record(buffers)
        elif cfg.upload == "delta":
            content[ARRAYS] = _to_record({k: torch.zeros_like(received[k]) for k in shared})
        else:
            content[ARRAYS] = _to_record({k: received[k] for k in shared})
        metrics = {NUM_EXAMPLES: 0, TRAIN_LOSS: 0.0, COMPUTE_S: 0.0, **report.metrics(), DEFENSE_S: defenses.seconds}
        content[METRICS] = MetricRecord(metrics)
        return content

    def train_content(
        self, received: dict[str, torch.Tensor], rnd: int, context: Context, *, instruction_id: str,
        server_config: dict | None = None,
    ) -> RecordDict:
        """One round of local training from the global tensors ``received``: the reply's content.

        Shared by the Message-API ClientApp and the SecAgg+ (legacy NumPyClient) one;
        ``instruction_id`` keys the ground-truth sidecar entry; ``server_config`` is the
        instruction's config (it may define the architecture)."""
        cfg = self.config.federation
        partition = int(context.node_config["partition-id"])
        data = self.task.dataset
        spec = (server_config or {}).get(ARCHITECTURE_KEY) or None
        extra = {k: v for k, v in received.items() if k not in self.initial}
        model = self._fresh_model({k: v for k, v in received.items() if k in self.initial}, context)
        if spec or extra:
            model = self._server_defined(model, spec, extra)
        defenses = self.defenses.for_round(seed=self.config.seed, round=rnd, partition=partition)
        report = self._vet(defenses, model, received, spec, rnd, partition, context)
        if report is not None and report.refuse:
            self._record_ground_truth(instruction_id, context, partition, rnd, LocalResult(0.0, 0, 0.0, []))
            return self._refusal(model, received, report, defenses)
        local_keys = self.task.local_keys(model)
        steps = cfg.steps_per_update
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
        encoded = [self._encode(defenses, x, y, idx, partition) for x, y, idx in batches]
        grad_fn = defenses.grad_fn()
        content = RecordDict()
        if cfg.protocol == "fedsgd":
            x, y, idx = encoded[0][0]
            result, grads = fedsgd_step(model, x, y, idx, lr=cfg.lr, local_params=local_keys, grad_fn=grad_fn)
            if defenses.defenses.transforms:
                grads = defenses.transform(grads)
            content[ARRAYS] = _to_record(grads)
            buffers = {k: v for k, v in model.state_dict().items() if k in set(self.task.shared_keys(model)) and k not in grads}
            if buffers:
                content[BUFFERS] = _to_record(buffers)
        else:
            result = fedavg_steps(model, [b for b, _ in encoded], lr=cfg.lr, grad_fn=grad_fn)
            sd = model.state_dict()
            shared = {k: sd[k] for k in self.task.shared_keys(model)}
            delta: dict[str, torch.Tensor] = {}
            if defenses.defenses.transforms:
                trained = [k for k, _ in model.named_parameters() if k in shared]
                delta = defenses.transform({k: shared[k] - received[k] for k in trained})
            if cfg.upload == "delta":
                shared = {k: delta[k] if k in delta else v - received[k] for k, v in shared.items()}
            else:
                shared.update({k: received[k] + d for k, d in delta.items()})
            content[ARRAYS] = _to_record(shared)
        metrics = {NUM_EXAMPLES: result.num_examples, TRAIN_LOSS: result.loss, COMPUTE_S: result.compute_s}
        if report is not None:
            metrics.update(report.metrics())
        if defenses.defenses:
            metrics.update(
                defenses.round_metrics(
                    RoundContext(
                        state=context.state,
                        round=rnd,
                        steps=steps,
                        batch_size=len(batches[0][2]),
                        partition_size=len(self.task.partitions[partition]),
                    )
                )
            )
            metrics[DEFENSE_S] = defenses.seconds
            result.steps = [
                dataclasses.replace(step, images=truth[0], labels=truth[1], extra={**step.extra, **truth[2]})
                if truth is not None
                else step
                for step, (_, truth) in zip(result.steps, encoded)
            ]
        content[METRICS] = MetricRecord(metrics)
        _keep_local(self.task, model, context)
        self._record_ground_truth(instruction_id, context, partition, rnd, result)
        return content

    def _encode(self, defenses: RoundDefenses, x: torch.Tensor, y: torch.Tensor, idx: np.ndarray, partition: int):
        """((model input, target, indices), ground truth or None) for one batch.

        With an encoder, the ground truth is (private images, private labels, extra
        arrays: encoding keys, ``encoded`` images and ``encoded_labels``)."""
        data = self.task.dataset
        ctx = EncodeContext(
            indices=np.asarray(idx), pool=self.task.partitions[partition], train_x=data.train_x, train_y=data.train_y,
            num_classes=data.num_classes,
        )
        out = defenses.encode(x, y, ctx)
        if out is None:
            return (x, y, idx), None
        x_enc, y_enc, keys = out
        extra = {
            **{k: np.ascontiguousarray(v) for k, v in keys.items()},
            "encoded": x_enc.detach().cpu().numpy().astype(np.float32),
            "encoded_labels": y_enc.detach().cpu().numpy().astype(np.float32),
        }
        return (x_enc, y_enc, idx), (x, y, extra)

    def evaluate(self, message: Message, context: Context) -> Message:
        loss, acc, n = self.evaluate_state(message.content[ARRAYS].to_torch_state_dict(), context)
        metrics = MetricRecord({EVAL_LOSS: loss, EVAL_ACC: acc, NUM_EXAMPLES: n})
        return Message(content=RecordDict({"metrics": metrics}), reply_to=message)

    def evaluate_state(self, received: dict[str, torch.Tensor], context: Context) -> tuple[float, float, int]:
        """Test loss, accuracy and size with the global tensors and this client's own local (BN) state."""
        model = self._fresh_model(received, context)
        x, y = self.task.test_split
        loss, acc = evaluate_model(model, x, y, self.config.eval.batch_size)
        return loss, acc, len(y)

    def _record_ground_truth(self, instruction_id: str, context: Context, partition: int, rnd: int, result: LocalResult) -> None:
        if self.truth is None or not self.config.tap.ground_truth:
            return
        self.truth(PrivateBatch(
            instruction_id=instruction_id,
            node_id=context.node_id,
            partition_id=partition,
            round=rnd,
            steps=[s.as_arrays() for s in result.steps],
            extra={
                "protocol": self.config.federation.protocol,
                "lr": self.config.federation.lr,
                "defenses": [d.model_dump(mode="json") for d in self.config.defenses if d.applies_to(partition)],
            },
        ))


_RUNTIMES: dict[str, ClientRuntime] = {}


def client_runtime(config: RunConfig, truth: GroundTruthSink | None) -> ClientRuntime:
    """This process's runtime for the run (rebuilt when the run changes)."""
    key = config.model_dump_json() + (truth.key if truth is not None else "")
    if key not in _RUNTIMES:
        _RUNTIMES.clear()
        _RUNTIMES[key] = ClientRuntime(config, truth)
    return _RUNTIMES[key]
