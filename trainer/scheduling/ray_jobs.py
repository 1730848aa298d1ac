"""Submission through Ray's Job Submission API (the dashboard's HTTP API), so the embedded
local cluster and a remote one (KubeRay, `ray start` on GPU hosts) are driven the same way.
Every Ray error is translated here: callers see TrainerErrors, with credentials masked.

Each request carries the cluster's token (`trainer.cluster.auth.headers_for`): the local
cluster's own, or a remote one's from RAY_AUTH_TOKEN / RAY_AUTH_TOKEN_PATH."""
from __future__ import annotations

import asyncio
import queue
import threading
from contextlib import contextmanager
from typing import Any, Iterator

from trainer.cluster import auth
from trainer.credentials import redact, redact_text
from trainer.errors import ClusterError, JobError, TrainerError, first_line, foreign, ours
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

    def tail(self, job_id: str) -> "LogTail":
        """The job's log as Ray streams it (a websocket through the dashboard to the driver node's
        agent): each byte crosses once, where `logs` sends the whole log every call."""
        return LogTail(self._client, job_id)

    def stop(self, job_id: str) -> bool:
        self.info(job_id)
        with _translate(ClusterError, f"cannot stop job {job_id}", self.address):
            return self._client.stop_job(job_id)

    def list(self) -> list:
        with _translate(ClusterError, f"cannot list jobs on {self.shown}", self.address):
            jobs = self._client.list_jobs()
        return [j for j in jobs if (j.metadata or {}).get(METADATA_MARK) == "1"]


class LogTail:
    """Ray's log tail of one job, read on a thread of its own (Ray's client is asyncio): `take()`
    returns what arrived since the last call, without waiting. Ray sends new lines a second or two
    after they are written and closes the stream only a second or two after the job ends, so a
    follower polls the job's state beside it and reads the rest of the log once at the end
    (`Job.follow`). `failed` holds why the stream could not be opened or broke (a proxy that
    refuses websockets, a dashboard gone): the follower then reads the log by polling."""

    def __init__(self, client, job_id: str):
        self._client, self._job_id = client, job_id
        self._chunks: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task | None = None
        self.failed: str | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=f"log-tail-{job_id}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            asyncio.run(self._pump())
        except asyncio.CancelledError:
            pass
        except Exception as e:      # noqa: BLE001 - any failure means: fall back to polling
            self.failed = redact_text(first_line(e))

    async def _pump(self) -> None:
        self._loop, self._task = asyncio.get_running_loop(), asyncio.current_task()
        if self._closed:            # closed before the loop existed (see close)
            return
        async for chunk in self._client.tail_job_logs(self._job_id):
            self._chunks.put(chunk)

    def take(self) -> str:
        out = []
        while True:
            try:
                out.append(self._chunks.get_nowait())
            except queue.Empty:
                return "".join(out)

    def close(self) -> None:
        # The flag first, the loop after: _pump sets the loop first and reads the flag after, so
        # one of the two sees the other and the stream is never left open.
        self._closed = True
        loop, task = self._loop, self._task
        if loop is not None and task is not None and self._thread.is_alive():
            try:
                loop.call_soon_threadsafe(task.cancel)
            except RuntimeError:    # the loop ended meanwhile
                pass
        self._thread.join(timeout=5)
