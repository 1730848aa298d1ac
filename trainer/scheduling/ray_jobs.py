"""Submission through Ray's Job Submission API (the dashboard's HTTP API), so the embedded
local cluster and a remote one (KubeRay, `ray start` on GPU hosts) are driven the same way.
Every Ray error is translated here: callers see TrainerErrors, with credentials masked.

Each request carries the cluster's token (`trainer.cluster.auth.headers_for`): the local
cluster's own, or a remote one's from RAY_AUTH_TOKEN / RAY_AUTH_TOKEN_PATH."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

from trainer.cluster import auth
from trainer.credentials import redact, redact_text
from trainer.errors import ClusterError, JobError, TrainerError, foreign, ours
from trainer.state import JobState

# Jobs submitted by trainer carry this in their Ray metadata (`trainer list` shows only those).
METADATA_MARK = "trainer"


@contextmanager
def _translate(error: type[TrainerError], message: str, address: str) -> Iterator[None]:
    """Ray's errors as `error`, one line, credentials masked (trainer.errors.translate); a 401/403
    says where tokens come from."""
    try:
        yield
    except TrainerError:
        raise
    except Exception as e:
        row = foreign(e)
        if row is not None and row.kind == "unauthorized":   # the dashboard said 401/403
            from trainer.cluster.inventory import unauthorized

            status = 401 if str(e).startswith("Authentication required") else 403
            raise ClusterError(unauthorized(address, status, bool(auth.headers_for(address)))) from None
        out = ours(e, message, error, redact=redact_text)
        raise out from out.__cause__


class RayJobs:
    def __init__(self, address: str):
        self.address = address
        self.shown = redact(address)
        from ray.job_submission import JobSubmissionClient

        with _translate(ClusterError, f"cannot reach the Ray cluster at {self.shown}", address):
            self._client = JobSubmissionClient(address, headers=auth.headers_for(address))

    def submit(self, *, job_id: str, entrypoint: str, runtime_env: dict[str, Any],
               metadata: dict[str, str], driver_labels: dict[str, str] | None = None) -> str:
        """`driver_labels`: the labels of the node the driver must run on (Ray's default: the head)."""
        with _translate(JobError, f"Ray refused job {job_id}", self.address):
            return self._client.submit_job(entrypoint=entrypoint, submission_id=job_id,
                                           runtime_env=runtime_env, entrypoint_label_selector=driver_labels,
                                           metadata={METADATA_MARK: "1", **metadata})

    def find(self, job_id: str):
        """The job's info, or None when the cluster has no such job."""
        try:
            return self.info(job_id)
        except JobError:
            return None

    def info(self, job_id: str):
        try:
            return self._client.get_job_info(job_id)
        except Exception as e:
            if "does not exist" in str(e) or "404" in str(e) or "not found" in str(e).lower():
                raise JobError(f"no job {job_id!r} on {self.shown} (see `trainer list`)") from None
            with _translate(ClusterError, f"cannot read job {job_id} from {self.shown}", self.address):
                raise

    def state(self, job_id: str) -> JobState:
        return JobState.from_ray(self.info(job_id).status)

    def logs(self, job_id: str) -> str:
        self.info(job_id)
        with _translate(ClusterError, f"cannot read logs of {job_id}", self.address):
            return self._client.get_job_logs(job_id)

    def stop(self, job_id: str) -> bool:
        self.info(job_id)
        with _translate(ClusterError, f"cannot stop job {job_id}", self.address):
            return self._client.stop_job(job_id)

    def list(self) -> list:
        with _translate(ClusterError, f"cannot list jobs on {self.shown}", self.address):
            jobs = self._client.list_jobs()
        return [j for j in jobs if (j.metadata or {}).get(METADATA_MARK) == "1"]
