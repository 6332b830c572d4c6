"""Node ids drawn from the run seed, the same way in both engines.

Flower registers simulated nodes one after another, partition 0 first; drawing
their ids from one seeded stream (instead of os.urandom) makes client sampling,
which goes by node id, reproducible and identical across engines.
"""

from __future__ import annotations

import random

NODE_ID_BYTES = 8


def draw_id(rng: random.Random, num_bytes: int = NODE_ID_BYTES, exclude: set[int] | None = None) -> int:
    while True:
        value = rng.getrandbits(8 * num_bytes)
        if value and (not exclude or value not in exclude):
            return value


def node_ids_for(seed: int, num_nodes: int) -> list[int]:
    """Ids of partitions 0..num_nodes-1, in partition order."""
    rng = random.Random(seed)
    ids: list[int] = []
    for _ in range(num_nodes):
        ids.append(draw_id(rng, exclude=set(ids)))
    return ids
