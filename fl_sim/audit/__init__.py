"""Audit an existing, unmodified Flower app: run it under the tap."""

from fl_sim.audit.app_ref import AuditError, FlowerAppSpec, load_app_spec
from fl_sim.audit.runner import AuditOutcome, run_audit

__all__ = ["AuditError", "AuditOutcome", "FlowerAppSpec", "load_app_spec", "run_audit"]
