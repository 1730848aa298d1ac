"""trainer: one job spec from laptop to cluster.

    import trainer
    job = trainer.submit("examples/digits/torch.yaml")
    job.wait(); job.metrics()
"""
from trainer.api import Job, cluster_down, cluster_status, cluster_up, list_jobs, run_local, submit
from trainer.errors import TrainerError
from trainer.logs import quiet
from trainer.spec import JobSpec, load_spec
from trainer.state import JobState

__all__ = ["submit", "run_local", "Job", "JobState", "JobSpec", "load_spec", "list_jobs",
           "cluster_up", "cluster_down", "cluster_status", "TrainerError", "quiet"]
__version__ = "0.1.0"
