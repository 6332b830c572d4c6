"""Which messages' tensors the traffic log keeps on disk (``[tap]`` keep_* keys); the rest keep metadata.

A federation of hundreds of clients over many rounds produces more uploads than a user wants to
store. A policy keeps, say, every tenth round or a seeded tenth of the clients; every message still
gets its index row (sizes on the wire, digests, norms, metrics), and the adversary still reads every
message's tensors while it happens (see :class:`adversary.traffic_writer.TrafficWriter`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from adversary.traffic_log import MessageMeta
from fl_sim.config import TapConfig


@dataclass(frozen=True)
class TapPolicy:
    directions: frozenset[str]
    rounds: frozenset[int]
    every: int
    message_types: frozenset[str]
    client_fraction: float
    seed: int

    @classmethod
    def from_config(cls, tap: TapConfig, seed: int) -> TapPolicy:
        return cls(frozenset(tap.keep_directions), frozenset(tap.keep_rounds), tap.keep_every,
                   frozenset(tap.keep_message_types), tap.keep_clients, seed)

    def keeps_client(self, node: int) -> bool:
        """The seeded sample: the same clients for the whole run, about ``client_fraction`` of them."""
        if self.client_fraction >= 1.0:
            return True
        draw = int.from_bytes(hashlib.sha256(f"tap:{self.seed}:{node}".encode()).digest()[:8], "big")
        return draw < self.client_fraction * 2**64

    def keeps(self, message: MessageMeta) -> bool:
        if message.direction not in self.directions:
            return False
        if message.round is not None:  # messages outside any round (a query, a system message) always pass
            if self.rounds and message.round not in self.rounds:
                return False
            if (message.round - 1) % self.every:
                return False
        if self.message_types and message.message_type not in self.message_types:
            return False
        return self.keeps_client(message.client_node)
