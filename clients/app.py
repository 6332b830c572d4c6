"""The ClientApp: local training on a private partition, FedBN state kept at home.

Message contract (Flower Message API):
- ``train`` in: ``arrays`` (shared global tensors), ``config`` (server-round, ...).
  out: ``arrays`` (FedSGD: gradients; FedAvg: weights or delta), optional
  ``buffers`` (FedSGD without FedBN: running statistics), ``metrics``.
- ``evaluate`` in: ``arrays``; out: ``metrics`` (eval-loss, eval-acc, num-examples).

Tensors listed by :meth:`fl_sim.task.Task.local_keys` never enter a reply; they
persist across rounds in ``context.state``.

Server-defined architectures: an instruction may carry an ``architecture`` spec and
the tensors of a block it inserts (:mod:`fl_sim.models.server_defined`). Clients
build and train it only where the deployment works that way
(``federation.model_from_server``); otherwise they refuse the round with an error.
A vetting defense (kind ``vet``) inspects the received model before training and may
have the client refuse: it then reports zero examples and an unchanged model.

Defenses (``config.defenses``, :mod:`clients.defenses`) run here: the batch
encoder on each batch before its step, the gradient-step hook inside the step,
the update transforms on the outgoing update (FedSGD: the gradients; FedAvg: the
delta ``new - received`` of the trained parameters, sent as ``received + delta``
or as the delta with ``upload="delta"``). Buffers (e.g. BN running statistics)
are not transformed. Encoding keys and encoded images go to the ground-truth
sidecar only (handed to the run's :class:`~fl_sim.ground_truth.GroundTruthSink`); the reply's metrics carry ``defense-s`` (seconds spent in defenses)
and what defenses report (``dp-epsilon``).
"""

from __future__ import annotations

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from clients.runtime import client_runtime
from clients.secagg import make_secagg_client_app
from fl_sim.config import RunConfig
from fl_sim.ground_truth import GroundTruthSink


def make_client_app(config: RunConfig, truth: GroundTruthSink | None) -> ClientApp:
    """A ClientApp bound to a run, handing its private batches to ``truth``; picklable, so Ray actors can
    rebuild it.

    With ``federation.secagg`` it is the legacy SecAgg+ app of :mod:`clients.secagg`."""
    if config.federation.secagg:
        return make_secagg_client_app(config, truth)
    app = ClientApp()

    @app.train()
    def train(message: Message, context: Context) -> Message:
        return client_runtime(config, truth).train(message, context)

    @app.evaluate()
    def evaluate_(message: Message, context: Context) -> Message:
        return client_runtime(config, truth).evaluate(message, context)

    return app
