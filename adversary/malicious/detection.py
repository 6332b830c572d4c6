"""How well the clients' vetting defense caught a malicious server (evaluation side).

Which rounds were manipulated comes from the server's own record
(:mod:`adversary.malicious.record`); what each client concluded comes from its
reply's metrics (``vetting-flagged``, ``vetting-flag/<check>``) in the traffic log.
Detection rate: flagged replies among replies to manipulated rounds; false alarms:
flagged replies among replies to honest rounds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from adversary.malicious.record import manipulated_rounds
from adversary.traffic_log import TrafficLog
from fl_sim.wire import METRICS


def _rate(hits: int, total: int) -> float | None:
    return hits / total if total else None


def vetting_detection(run_dir: str | Path) -> dict[str, Any] | None:
    """Detection and false-alarm counts and rates, or None when no reply carries a vetting verdict."""
    manipulated = set(manipulated_rounds(run_dir))
    counts = {"manipulated_replies": 0, "detected": 0, "honest_replies": 0, "false_alarms": 0}
    by_check: dict[str, int] = {}
    seen = False
    with TrafficLog.open(run_dir) as log:
        for msg in log.messages(direction="up", message_type="train"):
            metrics = {k.removeprefix(f"{METRICS}/"): v for k, v in msg.metrics.items()}
            if "vetting-flagged" not in metrics:
                continue
            seen = True
            flagged = bool(metrics["vetting-flagged"])
            if msg.round in manipulated:
                counts["manipulated_replies"] += 1
                counts["detected"] += flagged
                for key in metrics:
                    if key.startswith("vetting-flag/"):
                        check = key.split("/", 1)[1]
                        by_check[check] = by_check.get(check, 0) + 1
            else:
                counts["honest_replies"] += 1
                counts["false_alarms"] += flagged
    if not seen:
        return None
    return {**counts, "detection_rate": _rate(counts["detected"], counts["manipulated_replies"]),
            "false_alarm_rate": _rate(counts["false_alarms"], counts["honest_replies"]),
            "detected_by_check": by_check}
