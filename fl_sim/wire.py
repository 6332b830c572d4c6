"""What travels between server and clients: record and key names, and what an update is.

Every module that builds or reads a message uses these names, so the client, the
server's loops, the tap and the attacker agree on one vocabulary.

Message-API contract (fl-sim's own apps):

- ``train`` instruction: ``arrays`` (the global tensors, or a malicious server's),
  ``config`` (:data:`SERVER_ROUND`, :data:`LR`, :data:`LOCAL_STEPS`,
  :data:`BATCH_SIZE`, :data:`PROTOCOL`, optionally an architecture spec);
- ``train`` reply: ``arrays`` (FedSGD: gradients; FedAvg: weights or delta),
  optionally ``buffers`` (FedSGD without FedBN: running statistics), ``metrics``
  (:data:`NUM_EXAMPLES`, :data:`TRAIN_LOSS`, :data:`COMPUTE_S`, ...);
- ``evaluate``: ``arrays`` in, ``metrics`` (:data:`EVAL_LOSS`, :data:`EVAL_ACC`,
  :data:`NUM_EXAMPLES`) out.

Flower's legacy API (SecAgg+) sends positional lists instead: ``fitins.parameters/<i>``
down and ``fitres.parameters/<i>`` up, in the order of the shared state keys.
"""

from __future__ import annotations

from typing import Literal

# Records of a message's content.
ARRAYS = "arrays"
BUFFERS = "buffers"
METRICS = "metrics"
CONFIG = "config"
LEGACY_DOWN = "fitins.parameters"
LEGACY_UP = "fitres.parameters"
MODEL_RECORDS = (ARRAYS, LEGACY_DOWN)  # records that carry a model the server sends

# Instruction config keys.
SERVER_ROUND = "server-round"
LR = "lr"
LOCAL_STEPS = "local-steps"
BATCH_SIZE = "batch-size"
PROTOCOL = "protocol"

# Reply metric keys.
NUM_EXAMPLES = "num-examples"
LEGACY_NUM_EXAMPLES = "num_examples"  # FitRes/EvaluateRes of Flower's legacy API: fitres.num_examples/num_examples
TRAIN_LOSS = "train-loss"
COMPUTE_S = "compute-s"
DEFENSE_S = "defense-s"
EVAL_LOSS = "eval-loss"
EVAL_ACC = "eval-acc"

Protocol = Literal["fedsgd", "fedavg"]
UpdateKind = Literal["gradient", "delta", "weights"]


def steps_per_update(protocol: str, local_steps: int) -> int:
    """Local steps behind one update: FedSGD sends one gradient, FedAvg trains ``local_steps``."""
    return local_steps if protocol == "fedavg" else 1


def update_kind(protocol: str, upload: str) -> UpdateKind:
    """What a training reply holds: a gradient (FedSGD), or FedAvg's new weights or their delta."""
    if protocol == "fedsgd":
        return "gradient"
    return "delta" if upload == "delta" else "weights"


def record_tensors(tensors: dict, record: str) -> dict:
    """The tensors of one record of a flattened message (``record/key`` names), keys without the record."""
    head = record + "/"
    return {k[len(head):]: v for k, v in tensors.items() if k.startswith(head)}


def plain_keys(values: dict) -> dict:
    """Flattened ``record/key`` names (metrics, config) reduced to their last part."""
    return {k.rsplit("/", 1)[-1]: v for k, v in values.items()}


def reported_examples(metrics: dict) -> int | None:
    """The examples a reply reports (Message API ``num-examples``, legacy ``num_examples``), or None."""
    plain = plain_keys(metrics)
    value = plain.get(NUM_EXAMPLES, plain.get(LEGACY_NUM_EXAMPLES))
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
