"""The job lifecycle. `trainer status` prints exactly these names."""
from __future__ import annotations

from enum import Enum


class JobState(str, Enum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def is_terminal(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)

    @classmethod
    def from_ray(cls, status) -> "JobState":
        name = getattr(status, "value", str(status))
        return {"PENDING": cls.PENDING, "RUNNING": cls.RUNNING, "SUCCEEDED": cls.SUCCEEDED,
                "FAILED": cls.FAILED, "STOPPED": cls.CANCELLED}[name]

    @property
    def mlflow_status(self) -> str:
        return {JobState.SUCCEEDED: "FINISHED", JobState.FAILED: "FAILED",
                JobState.CANCELLED: "KILLED"}.get(self, "RUNNING")

    def __str__(self) -> str:
        return self.value
