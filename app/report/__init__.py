"""``fl-sim report RUN_DIR``: one self-contained HTML page saying what a run leaked.

Works on any run directory (a simulation or an audit, with or without attacks, with attacks still
pending), reads it as untrusted data (:mod:`app.report.facts`) and writes ``RUN_DIR/report.html``.
"""

from __future__ import annotations

from pathlib import Path

from app.report.facts import ReportError, RunFacts, read_run
from app.report.page import write_run_report
from app.report.story import summary_lines

__all__ = ["ReportError", "RunFacts", "read_run", "report_run", "summary_lines", "write_run_report"]


def report_run(run_dir: str | Path) -> tuple[Path, list[str]]:
    """Write the run's report; returns its path and the summary sentences at its top."""
    facts = read_run(run_dir)
    lines = summary_lines(facts)
    try:
        path = write_run_report(facts, lines)
    except OSError as exc:
        raise ReportError(f"RUN_DIR: cannot write the report into {facts.run_dir} ({exc.strerror or type(exc).__name__})") from None
    return path, lines
