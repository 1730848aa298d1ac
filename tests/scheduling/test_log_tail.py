"""Following a job on the real local cluster: the lines come through Ray's log tail (a websocket,
token auth included), the whole log is read once, at the end, and what `follow` yields is the log
exactly, a line longer than Ray's 20,000-character chunks and a last line without its newline included."""
import sys

import pytest

pytestmark = pytest.mark.integration

# Lines over 3 s (the tail delivers them while the job runs), one longer than the 20,000 characters
# Ray puts in one chunk at most, then a last line without a newline.
PRINTER = ("import sys, time\n"
           "for i in range(60):\n"
           "    print(f'line {i}', flush=True)\n"
           "    time.sleep(0.05)\n"
           "print('x' * 25000, flush=True)\n"
           "time.sleep(1)\n"
           "sys.stdout.write('no newline at the end'); sys.stdout.flush()\n")


def test_follow_yields_the_log_with_one_read_of_it(cluster, tmp_path, monkeypatch):
    from trainer.api.jobs import Job
    from trainer.scheduling.ray_jobs import RayJobs

    script = tmp_path / "printer.py"
    script.write_text(PRINTER)
    jobs = RayJobs(cluster.dashboard_url)
    job_id = jobs.submit(job_id=f"tail-{tmp_path.name}", entrypoint=f"{sys.executable} {script}",
                         runtime_env={}, metadata={})
    reads = []
    original = RayJobs.logs
    monkeypatch.setattr(RayJobs, "logs", lambda self, job: reads.append(job) or original(self, job))
    followed = list(Job(id=job_id, address=cluster.dashboard_url).follow())
    log = original(jobs, job_id)
    assert followed == log.split("\n"), followed[-3:]
    assert followed[-1] == "no newline at the end" and "x" * 25000 in followed
    assert reads == [job_id]        # the tail carried the rest
