"""One client's side of a SecAgg+ round, run alone: its neighbours are emulated.

To know what SecAgg+ costs a client (:mod:`clients.overhead`), the client must run the
protocol's four stages through Flower's real ``secaggplus_mod``, and nothing else may be on
the clock. Here the neighbours' key pairs, mask seeds and the shares they encrypt for the
client are made with Flower's own primitives, between the client's calls, and the messages
are shaped as ``SecAggPlusWorkflow`` (Flower 1.41) forwards them, so the client's checks
(sources, destinations, thresholds) all run. The neighbours' and the server's work is theirs:
the caller times only ``call``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from flwr.app import ConfigRecord, Message, RecordDict
from flwr.app.message_type import MessageType
from flwr.common.secure_aggregation.crypto.shamir import create_shares
from flwr.common.secure_aggregation.crypto.symmetric_encryption import encrypt, generate_shared_key
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage
from flwr.common.secure_aggregation.secaggplus_utils import share_keys_plaintext_concat
from flwr.supercore.primitives.asymmetric import (
    bytes_to_private_key,
    bytes_to_public_key,
    generate_key_pairs,
    private_key_to_bytes,
    public_key_to_bytes,
)

from fl_sim.config import RunConfig


@dataclass(frozen=True)
class ProtocolSizes:
    clients: int  # sampled per round
    shares: int  # each secret's shares: the client's neighbours, itself included
    threshold: int  # shares that rebuild a secret


def protocol_sizes(config: RunConfig) -> ProtocolSizes:
    """The round's sizes, resolved as ``SecAggPlusWorkflow.setup_stage`` resolves them."""
    n = config.federation.sampled_per_round
    sa = config.secagg
    if isinstance(sa.num_shares, float):
        shares = round(sa.num_shares * n)
        if shares < n and shares % 2 == 0:
            shares += 1
        if shares <= 2:
            shares = n
    else:
        shares = sa.num_shares
    if isinstance(sa.reconstruction_threshold, float):
        threshold = max(round(sa.reconstruction_threshold * shares), 2)
    else:
        threshold = sa.reconstruction_threshold
    return ProtocolSizes(clients=n, shares=shares, threshold=threshold)


@dataclass(frozen=True)
class Peer:
    """An emulated neighbour: its two key pairs and its private-mask seed."""

    node_id: int
    sk1: bytes
    pk1: bytes
    sk2: bytes
    pk2: bytes
    seed: bytes

    @classmethod
    def new(cls, node_id: int) -> Peer:
        sk1, pk1 = generate_key_pairs()
        sk2, pk2 = generate_key_pairs()
        return cls(node_id, private_key_to_bytes(sk1), public_key_to_bytes(pk1), private_key_to_bytes(sk2),
                   public_key_to_bytes(pk2), os.urandom(32))

    def shares_for(self, node_id: int, client_pk2: bytes, sizes: ProtocolSizes, index: int) -> bytes:
        """The ciphertext of this peer's seed and sk1 shares for ``node_id`` (what it uploads in share_keys)."""
        seed_shares = create_shares(self.seed, sizes.threshold, sizes.shares)
        sk1_shares = create_shares(self.sk1, sizes.threshold, sizes.shares)
        key = generate_shared_key(bytes_to_private_key(self.sk2), bytes_to_public_key(client_pk2))
        return encrypt(key, share_keys_plaintext_concat(self.node_id, node_id, seed_shares[index], sk1_shares[index]))


@dataclass(frozen=True)
class ClientRound:
    """What the client uploaded in one round (for checks): its public keys, its shares for the peers,
    the masked vectors and the unmask reply; and the peers that made them meaningful."""

    node_id: int
    peers: list[Peer]
    sizes: ProtocolSizes
    pk1: bytes
    pk2: bytes
    share_keys: RecordDict
    masked: Message
    unmask: RecordDict


def _message(content: RecordDict, node_id: int, rnd: int) -> Message:
    return Message(content=content, dst_node_id=node_id, message_type=MessageType.TRAIN, group_id=str(rnd))


def _configs(reply: Message, stage: str) -> ConfigRecord:
    if reply.has_error():
        raise RuntimeError(f"SecAgg+ {stage}: the client failed: {reply.error.reason}")
    return reply.content.config_records[RECORD_KEY_CONFIGS]


def run_client_round(call: Callable[[Message], Message], node_id: int, fit: RecordDict, config: RunConfig,
                     rnd: int = 1) -> ClientRound:
    """The four SecAgg+ stages for the client ``node_id``, each message through ``call`` (the client app).

    ``fit`` is the legacy fit instruction's content (``compat.fitins_to_recorddict``); the
    neighbours are fresh each round, as each round's keys are."""
    sizes = protocol_sizes(config)
    sa = config.secagg
    peers = [Peer.new(node_id + 1 + i) for i in range(sizes.shares - 1)]

    setup = ConfigRecord({
        Key.STAGE: Stage.SETUP, Key.SAMPLE_NUMBER: sizes.clients, Key.SHARE_NUMBER: sizes.shares,
        Key.THRESHOLD: sizes.threshold, Key.CLIPPING_RANGE: float(sa.clipping_range),
        Key.TARGET_RANGE: int(sa.quantization_range), Key.MOD_RANGE: int(sa.modulus_range),
        Key.MAX_WEIGHT: float(config.secagg_max_weight),
    })
    keys = _configs(call(_message(RecordDict({RECORD_KEY_CONFIGS: setup}), node_id, rnd)), Stage.SETUP)
    pk1, pk2 = bytes(keys[Key.PUBLIC_KEY_1]), bytes(keys[Key.PUBLIC_KEY_2])

    public = ConfigRecord({str(p.node_id): [p.pk1, p.pk2] for p in peers})
    public[str(node_id)] = [pk1, pk2]
    public[Key.STAGE] = Stage.SHARE_KEYS
    share_reply = call(_message(RecordDict({RECORD_KEY_CONFIGS: public}), node_id, rnd))
    _configs(share_reply, Stage.SHARE_KEYS)

    collect = RecordDict(dict(fit.items()))
    collect.config_records[RECORD_KEY_CONFIGS] = ConfigRecord({
        Key.STAGE: Stage.COLLECT_MASKED_VECTORS,
        Key.CIPHERTEXT_LIST: [p.shares_for(node_id, pk2, sizes, i + 1) for i, p in enumerate(peers)],
        Key.SOURCE_LIST: [p.node_id for p in peers],
    })
    masked = call(_message(collect, node_id, rnd))
    _configs(masked, Stage.COLLECT_MASKED_VECTORS)

    everyone = [node_id, *(p.node_id for p in peers)]
    unmask = ConfigRecord({Key.STAGE: Stage.UNMASK, Key.ACTIVE_NODE_ID_LIST: everyone, Key.DEAD_NODE_ID_LIST: []})
    unmask_reply = call(_message(RecordDict({RECORD_KEY_CONFIGS: unmask}), node_id, rnd))
    _configs(unmask_reply, Stage.UNMASK)
    return ClientRound(node_id, peers, sizes, pk1, pk2, share_reply.content, masked, unmask_reply.content)
