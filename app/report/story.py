"""The report's plain-language summary, computed from the results: what leaked, from whom, and what
is still unknown. Every number in it comes from the run directory."""

from __future__ import annotations

from collections import defaultdict

from app.report.facts import AttackResult, RunFacts


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _noun(attacks: list[AttackResult]) -> str:
    """What the attacks were: single updates, decode jobs (T epochs of a MixUp/InstaHide client), or both."""
    decodes = {a.metrics.get("kind") == "decode" for a in attacks}
    return "decode job" if decodes == {True} else "attacked update" if decodes == {False} else "attack"


def _leaked(attack: AttackResult) -> bool:
    return attack.metrics.get("verdict") == "recognised"


def _images(attacks: list[AttackResult], level: str) -> tuple[int, int]:
    judged = [a.metrics["verdict_counts"] for a in attacks if isinstance(a.metrics.get("verdict_counts"), dict)]
    return sum(int(c.get(level, 0)) for c in judged), sum(sum(int(v) for v in c.values()) for c in judged)


def _who(facts: RunFacts, node: int | None) -> str:
    defenses = facts.defenses_of(node)
    if defenses is None:
        return facts.describe(node)
    where = f"client {node}, partition {facts.partition_of[node]}"
    return f"the client with {', '.join(defenses)} ({where})" if defenses else f"the undefended client ({where})"


def _per_client(facts: RunFacts, judged: list[AttackResult]) -> list[str]:
    by_client: dict[int | None, list[AttackResult]] = defaultdict(list)
    for attack in judged:
        node = attack.metrics.get("client_node")
        by_client[node if isinstance(node, int) else None].append(attack)
    if len(by_client) < 2 and not any(facts.defenses_of(n) for n in by_client):
        return []
    lines = []
    for node, attacks in by_client.items():
        leaked = sum(_leaked(a) for a in attacks)
        who = _who(facts, node)
        who = who[0].upper() + who[1:]
        if leaked == 0:
            partial = sum(a.metrics.get("verdict") == "partial" for a in attacks)
            tail = f" ({_plural(partial, 'update')} partially)" if partial else ""
            lines.append(f"{who} leaked no recognisable image in its {_plural(len(attacks), _noun(attacks))}{tail}.")
        else:
            lines.append(f"{who} leaked recognisable images in {leaked} of its {_plural(len(attacks), _noun(attacks))}.")
    return lines


def summary_lines(facts: RunFacts) -> list[str]:
    """A few sentences for the top of the report (and the end of the demo's terminal output)."""
    lines: list[str] = []
    judged = [a for a in facts.attacks if "verdict" in a.metrics]
    unjudged = [a for a in facts.attacks if "verdict" not in a.metrics]
    if judged:
        leaked = sum(_leaked(a) for a in judged)
        recognised, total = _images(judged, "recognised")
        lines.append(f"{leaked} of {_plural(len(judged), _noun(judged))} leaked recognisable images "
                     f"({recognised} of {_plural(total, 'private image')} recognised in the reconstructions).")
        lines += _per_client(facts, judged)
    if unjudged:
        lines.append(f"{_plural(len(unjudged), 'attack')} {'has' if len(unjudged) == 1 else 'have'} no verdict: "
                     "nothing to score the reconstructions against (an audit scores them with --client-data).")
    if facts.unfinished:
        lines.append(f"{_plural(len(facts.unfinished), 'attack')} {'is' if len(facts.unfinished) == 1 else 'are'} still "
                     f"pending: fl-sim attack {facts.run_dir} --resume finishes them.")
    if facts.failed:
        first = (facts.failed[0].error or "unknown error").strip().splitlines()[0]
        lines.append(f"{_plural(len(facts.failed), 'attack')} failed (first error: {first}).")
    if not (facts.attacks or facts.unfinished or facts.failed):
        lines.append("No attack has been run on this run's traffic"
                     + (" (the run had no adversary)." if not _has_adversary(facts) else ".")
                     + f" fl-sim attack {facts.run_dir} --round N --all attacks a round's updates.")
    accuracy = [r for r in facts.rounds if r.get("eval_acc") is not None]
    if accuracy:
        lines.append(f"Training: {_plural(len(facts.rounds), 'round')}, final test accuracy {accuracy[-1]['eval_acc']:.1%}.")
    return lines


def _has_adversary(facts: RunFacts) -> bool:
    adversary = facts.resolved.get("adversary")
    return isinstance(adversary, dict) and adversary.get("role", "none") != "none"
