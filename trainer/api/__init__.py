"""The Python API: what the CLI, notebooks, CI and benchmarks call.

    import trainer
    job = trainer.submit("examples/digits/torch.yaml", config={"epochs": 5})
    job.wait()
    job.metrics()          # pandas DataFrame from MLflow

This module only re-exports; each subsystem's face is a module of its own: `jobs` (Ray jobs and
local runs), `inspect` (a job's MLflow record; rerun), `k8s` (KubeRay), `cluster`, `images`, `monitoring`,
`promotion`, `registry`, `ui`, `verify` (keys, signatures). A test fails when a definition is added here
(tests/architecture/test_api_facade.py).
"""
from trainer.api._common import ENV_ADDRESS, resolve_address
from trainer.api.cluster import cluster_down, cluster_join, cluster_status, cluster_up, node_labels
from trainer.api.handle import SUMMARY_METRICS, JobHandle, close_run, run_summary
from trainer.api.images import image_base, image_build, image_check, image_ls, image_prune, image_push, image_ref
from trainer.api.inspect import compare_runs, find_recorded_run, inspect_run, recorded, recorded_log, rerun
from trainer.api.jobs import (RECONCILE_GRACE_S, Job, LocalRun, list_jobs, reconcile_runs, run_local, submit,
                              sweep_log, sweep_status)
from trainer.api.k8s import K8sJob, read_raycluster, render_k8s, submit_k8s
from trainer.api.monitoring import monitor_down, monitor_status, monitor_up
from trainer.api.promotion import Retrain, promote, promotion_history, retrain
from trainer.api.registry import (registry_copy, registry_ls, registry_pull, registry_push, registry_serve,
                                  registry_stop)
from trainer.api.ui import ui, versions
from trainer.api.verify import keys_init, keys_list, keys_trust, keys_untrust, verify
from trainer.protocol import LogFilter, failure_from_logs, parse_progress

__all__ = [
    "ENV_ADDRESS", "resolve_address",
    "cluster_up", "cluster_down", "cluster_status", "cluster_join", "node_labels",
    "JobHandle", "close_run", "Job", "LocalRun", "submit", "list_jobs", "run_local", "reconcile_runs", "run_summary",
    "sweep_status", "sweep_log",
    "parse_progress", "failure_from_logs", "LogFilter", "RECONCILE_GRACE_S", "SUMMARY_METRICS",
    "inspect_run", "rerun", "compare_runs", "find_recorded_run", "recorded", "recorded_log",
    "image_base", "image_build", "image_ls", "image_check", "image_ref", "image_push", "image_prune",
    "K8sJob", "render_k8s", "submit_k8s", "read_raycluster",
    "monitor_up", "monitor_down", "monitor_status",
    "Retrain", "promote", "promotion_history", "retrain",
    "registry_serve", "registry_stop", "registry_push", "registry_pull", "registry_ls", "registry_copy",
    "ui", "versions",
    "keys_init", "keys_trust", "keys_untrust", "keys_list", "verify",
]
