"""What the traffic log tells at a glance: messages and bytes per round and direction, and the
round metrics the clients reported in their replies (an audited app's only training curve)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from adversary.traffic_log import MessageMeta


def traffic_by_round(messages: list[MessageMeta]) -> list[tuple[int | None, str, int, int]]:
    """(round, direction, messages, bytes on the wire), rounds in order (None, outside any round, last)."""
    rows: dict[tuple[int | None, str], list[int]] = {}
    for m in messages:
        row = rows.setdefault((m.round, m.direction), [0, 0])
        row[0] += 1
        row[1] += int(m.num_bytes)
    order = sorted(rows, key=lambda k: (k[0] is None, k[0] or 0, k[1] != "down"))
    return [(rnd, direction, *rows[(rnd, direction)]) for rnd, direction in order]


def round_metrics(messages: list[MessageMeta]) -> list[tuple[int, str, int, dict[str, float]]]:
    """The app's own round metrics as its clients reported them in the traffic (replies' metric records):
    per round and message type, the number of replies and the mean of each numeric metric."""
    rows: dict[tuple[int, str], list[Mapping[str, Any]]] = {}
    for m in messages:
        if m.direction == "up" and m.round is not None and not m.error:
            # legacy replies name metrics by record (``fitres.metrics/train_loss``): show the metric's own name
            rows.setdefault((m.round, m.message_type), []).append({k.rsplit("/", 1)[-1]: v for k, v in m.metrics.items()})
    out = []
    for (rnd, kind), metrics in sorted(rows.items()):
        keys = sorted({k for mm in metrics for k, v in mm.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
        means = {k: float(np.mean([mm[k] for mm in metrics if k in mm])) for k in keys}
        out.append((rnd, kind, len(metrics), means))
    return out
