"""The paper's tables and figures as runnable, resumable experiments.

Each experiment is a spec registered by name (:mod:`experiments.registry`) with
presets (``smoke`` for 2 CPU cores in minutes, ``paper`` for the paper's
settings); its work is split into cells, each cached on disk by the hash of its
parameters, so an interrupted experiment resumes and a finished one re-renders
instantly.
"""
