"""Submission through Ray's Job Submission API (the dashboard's HTTP API), so the embedded
local cluster and a remote one (KubeRay, `ray start` on GPU hosts) are driven the same way.
Every Ray error is translated here (`trainer.errors.translate`): callers see TrainerErrors."""
from __future__ import annotations

from typing import Any

from trainer.errors import ClusterError, JobError, first_line, translate
from trainer.state import JobState

# Jobs submitted by trainer carry this in their Ray metadata (`trainer list` shows only those).
METADATA_MARK = "trainer"


class RayJobs:
    def __init__(self, address: str):
        self.address = address
        from ray.job_submission import JobSubmissionClient

        with translate(ClusterError, f"cannot reach the Ray cluster at {address}"):
            self._client = JobSubmissionClient(address)

    def submit(self, *, job_id: str, entrypoint: str, runtime_env: dict[str, Any],
               metadata: dict[str, str]) -> str:
        with translate(JobError, f"Ray refused job {job_id}"):
            return self._client.submit_job(entrypoint=entrypoint, submission_id=job_id,
                                           runtime_env=runtime_env,
                                           metadata={METADATA_MARK: "1", **metadata})

    def info(self, job_id: str):
        try:
            return self._client.get_job_info(job_id)
        except Exception as e:
            if "does not exist" in str(e) or "404" in str(e) or "not found" in str(e).lower():
                raise JobError(f"no job {job_id!r} on {self.address} (see `trainer list`)") from None
            raise ClusterError(f"cannot read job {job_id} from {self.address}: {first_line(e)}") from e

    def state(self, job_id: str) -> JobState:
        return JobState.from_ray(self.info(job_id).status)

    def logs(self, job_id: str) -> str:
        self.info(job_id)
        with translate(ClusterError, f"cannot read logs of {job_id}"):
            return self._client.get_job_logs(job_id)

    def stop(self, job_id: str) -> bool:
        self.info(job_id)
        with translate(ClusterError, f"cannot stop job {job_id}"):
            return self._client.stop_job(job_id)

    def list(self) -> list:
        with translate(ClusterError, f"cannot list jobs on {self.address}"):
            jobs = self._client.list_jobs()
        return [j for j in jobs if (j.metadata or {}).get(METADATA_MARK) == "1"]
