"""Audit an existing, unmodified Flower app: run it under the tap."""

from app.audit.app_ref import AuditError, FlowerAppSpec, load_app_spec
from app.audit.runner import AuditOutcome, run_audit

__all__ = ["AuditError", "AuditOutcome", "FlowerAppSpec", "load_app_spec", "run_audit"]
