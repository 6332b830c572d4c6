"""The SecAgg+ ClientApp: our local training behind Flower's ``secaggplus_mod``.

Flower's SecAgg+ exists only in its legacy API, so this ClientApp is built from a
``client_fn`` returning a ``NumPyClient``; the training itself is
:meth:`clients.runtime.ClientRuntime.train_content`, the same code (batches, defenses,
FedBN state in ``context.state``, ground-truth sidecar) as the Message-API app.

Wire format (legacy): the global tensors arrive as a list in the order of the
model's shared state keys (``Task.shared_keys``) and the update goes back in the
same order; under FedSGD each entry is the gradient of a parameter or, for a
buffer shared without FedBN, its value. ``secaggplus_mod`` quantizes that list,
masks it and uploads only the masked integer vectors; the plain update never
leaves the client.

Mods, outermost first: :func:`instruction_id_mod` notes the id of the incoming
instruction in ``context.state`` (the NumPyClient never sees the Message) so the
ground-truth sidecar is keyed, as elsewhere, by the instruction the client
answered: under SecAgg+ that is the ``collect_masked_vectors`` instruction, the
one that carries the global model and whose reply carries the masked vectors.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import torch
from flwr.app import ConfigRecord, Context, Message
from flwr.client import Client, NumPyClient
from flwr.client.mod import secaggplus_mod
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import ClientAppCallable

from clients.runtime import ClientRuntime, client_runtime
from fl_sim.config import RunConfig
from fl_sim.ground_truth import GroundTruthSink
from fl_sim.models.server_defined import ARCHITECTURE_KEY, apply_architecture, inserted_keys
from fl_sim.wire import ARRAYS, BUFFERS, EVAL_ACC, EVAL_LOSS, METRICS, NUM_EXAMPLES, SERVER_ROUND

log = logging.getLogger("fl_sim.secagg")

INSTRUCTION_STATE = "fl-sim-instruction"
INSTRUCTION_KEY = "message-id"


def instruction_id_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Note the incoming instruction's id for the NumPyClient (placed before ``secaggplus_mod``)."""
    context.state[INSTRUCTION_STATE] = ConfigRecord({INSTRUCTION_KEY: msg.metadata.message_id})
    return call_next(msg, context)


def _scalar(value: object) -> int | float | str | bool:
    if isinstance(value, (bool, int, float, str)):
        return value
    return float(value)  # type: ignore[arg-type]


class SecAggClient(NumPyClient):
    """Legacy view of :class:`clients.runtime.ClientRuntime` for one node."""

    def __init__(self, runtime: ClientRuntime, context: Context) -> None:
        config = runtime.config
        self.runtime = runtime
        self.clipping_range = float(config.secagg.clipping_range)
        self.max_weight = config.secagg_max_weight
        self.node_context = context
        self.keys = self.runtime.task.shared_keys(self.runtime.model)

    def _keys_for(self, config: dict) -> list[str]:
        """Wire order: the shared keys, then those of a block a server-defined architecture inserts."""
        spec = config.get(ARCHITECTURE_KEY)
        if not spec:
            return self.keys
        built = apply_architecture(self.runtime.model, str(spec), self.runtime.task.dataset.input_shape)
        return [*self.keys, *inserted_keys(built, str(spec))]

    def _received(self, parameters: list[np.ndarray], keys: list[str] | None = None) -> dict[str, torch.Tensor]:
        keys = keys or self.keys
        if len(parameters) != len(keys):
            raise ValueError(f"expected {len(keys)} global tensors, got {len(parameters)}")
        return {k: torch.from_numpy(np.array(a, copy=True)) for k, a in zip(keys, parameters)}

    def fit(self, parameters: list[np.ndarray], config: dict) -> tuple[list[np.ndarray], int, dict]:
        state = self.node_context.state
        instruction = str(state[INSTRUCTION_STATE][INSTRUCTION_KEY]) if INSTRUCTION_STATE in state else ""
        keys = self._keys_for(config)
        content = self.runtime.train_content(
            self._received(parameters, keys), int(config[SERVER_ROUND]), self.node_context, instruction_id=instruction,
            server_config=dict(config),
        )
        update = content[ARRAYS].to_torch_state_dict()
        if BUFFERS in content:
            update.update(content[BUFFERS].to_torch_state_dict())
        if set(update) != set(keys):
            raise RuntimeError(f"update keys differ from the shared keys: {sorted(set(update) ^ set(keys))}")
        metrics = {k: _scalar(v) for k, v in content[METRICS].items()}
        num_examples = int(metrics[NUM_EXAMPLES])
        arrays = [update[k].detach().cpu().numpy() for k in keys]
        # secaggplus_mod clips (num_examples / max_weight) * value to +-clipping_range, silently.
        largest = max((float(np.abs(a).max()) for a in arrays if a.size), default=0.0) * num_examples / self.max_weight
        if largest > self.clipping_range:
            log.warning(
                "SecAgg+: round %s update values reach %.4g (weighted), beyond secagg.clipping_range=%g; "
                "they are clipped and the aggregate is biased",
                config.get(SERVER_ROUND), largest, self.clipping_range,
            )
        return arrays, num_examples, metrics

    def evaluate(self, parameters: list[np.ndarray], config: dict) -> tuple[float, int, dict]:
        loss, acc, n = self.runtime.evaluate_state(self._received(parameters), self.node_context)
        return float(loss), n, {EVAL_LOSS: float(loss), EVAL_ACC: float(acc)}


def legacy_client_app(runtime: Callable[[], ClientRuntime], *, secure: bool = True) -> ClientApp:
    """A legacy ClientApp (client_fn + NumPyClient) over ``runtime()``, wrapped in Flower's
    ``secaggplus_mod`` unless ``secure`` is false (the same app without the protocol, which
    :mod:`clients.overhead` compares it with)."""

    def client_fn(context: Context) -> Client:
        return SecAggClient(runtime(), context).to_client()

    return ClientApp(client_fn=client_fn, mods=[instruction_id_mod, *([secaggplus_mod] if secure else [])])


def make_secagg_client_app(config: RunConfig, truth: GroundTruthSink | None) -> ClientApp:
    """The SecAgg+ ClientApp of a run: this process's runtime behind ``secaggplus_mod``."""
    return legacy_client_app(lambda: client_runtime(config, truth))
