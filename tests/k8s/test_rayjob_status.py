"""A RayJob's status as trainer's job states, from recorded KubeRay status blocks: both fields are
read, and where they disagree (kuberay #2154, #3553) the answer says so. Following a job replays
statuses through `K8sJob.wait`; a failure's reason and pod logs land in its MLflow run."""
import pytest

from trainer.scheduling.rayjob import observe
from trainer.state import JobState

PRE_RUNNING = ("The RayJob has passed the preRunningDeadlineSeconds. Transition the status to terminal state "
               "Failed. Deadline: 900s")


def status(deployment=None, job=None, reason=None, message=None, cluster="digits-cnn-x-raycluster-abcde"):
    block = {"rayClusterName": cluster}
    for key, value in (("jobDeploymentStatus", deployment), ("jobStatus", job), ("reason", reason),
                       ("message", message)):
        if value is not None:
            block[key] = value
    return {"kind": "RayJob", "status": block}


@pytest.mark.parametrize("recorded,state,note", [
    ({"kind": "RayJob"}, JobState.PENDING, ""),                                      # just created
    (status("Initializing"), JobState.PENDING, ""),                                  # cluster starting
    (status("Waiting"), JobState.PENDING, ""),
    (status("Suspended"), JobState.PENDING, ""),                                      # queued (Kueue)
    (status("Running", "PENDING"), JobState.PENDING, ""),                             # submitted, not started
    (status("Running", ""), JobState.PENDING, ""),
    (status("Running", "RUNNING"), JobState.RUNNING, ""),
    (status("Complete", "SUCCEEDED"), JobState.SUCCEEDED, ""),
    (status("Complete", "FAILED", "AppFailed"), JobState.FAILED, ""),
    (status("Complete", "STOPPED"), JobState.CANCELLED, ""),
    (status("Failed", "", "DeadlineExceeded", PRE_RUNNING), JobState.FAILED, ""),   # stuck Initializing
    (status("Failed", "FAILED", "AppFailed"), JobState.FAILED, ""),
    (status("Failed", "RUNNING", "SubmissionFailed"), JobState.FAILED, "deployment Failed while the Ray job was RUNNING"),
    (status("Failed", "SUCCEEDED", "SubmissionFailed"), JobState.SUCCEEDED, "the Ray job succeeded; KubeRay marked"),
    (status("Running", "SUCCEEDED"), JobState.SUCCEEDED, "the deployment is still Running"),
    (status("Running", "FAILED"), JobState.RUNNING, "waiting for KubeRay to retry or finish"),
    (status("Retrying", "FAILED"), JobState.PENDING, "retrying on a new cluster"),
    (status("SomethingNew"), JobState.PENDING, "unknown deployment status 'SomethingNew'"),
])
def test_kuberay_statuses_map_to_job_states(recorded, state, note):
    observed = observe(recorded)
    assert observed.state is state
    assert (note in observed.note) if note else observed.note == ""


def test_the_reason_is_kept_and_shown():
    observed = observe(status("Failed", "", "DeadlineExceeded", PRE_RUNNING))
    assert observed.reason == "DeadlineExceeded" and observed.cluster.endswith("abcde")
    assert observed.describe().startswith("FAILED (deployment Failed, Ray job -): DeadlineExceeded The RayJob")


class ReplayKube:
    """Stands in for trainer.scheduling.kube.Kube: replays recorded RayJob statuses, serves logs."""

    def __init__(self, statuses):
        self.statuses = list(statuses)
        self.selectors = []

    def rayjob(self, namespace, name):
        return self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]

    def pod_logs(self, namespace, selector):
        self.selectors.append(selector)
        return {f"pod-{len(self.selectors)}": f"logs for {selector}\nerror: training failed: boom\n"}


def _job(tmp_path, monkeypatch, statuses):
    import trainer
    from trainer.spec import load_spec
    from trainer.tracking import runs

    monkeypatch.chdir(tmp_path)   # MLflow puts a non-default store's artifacts under ./mlruns
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    spec, _ = load_spec({"name": "digits", "framework": "torch", "entrypoint": "train.py:train"})
    run_id = runs.start_run(spec, "digits-x", uri, "k8s://ml/digits-x", None)
    job = trainer.api.K8sJob(name="digits-x", namespace="ml", run_id=run_id, tracking_uri=uri)
    kube = ReplayKube(statuses)
    monkeypatch.setattr(job, "_kube", lambda: kube)
    return job, kube, uri, run_id


def test_following_a_failed_job_records_reason_and_logs_in_its_run(tmp_path, monkeypatch):
    from trainer.tracking.runs import client

    statuses = [status("Initializing"), status("Initializing"), status("Running", "RUNNING"),
                status("Failed", "FAILED", "AppFailed", "job failed")]
    job, kube, uri, run_id = _job(tmp_path, monkeypatch, statuses)
    seen = []
    state = job.wait(poll_s=0, on_change=seen.append)     # a JobState, as Job.wait (JobHandle)
    last = job.last
    assert state is JobState.FAILED
    assert [o.state for o in seen] == [JobState.PENDING, JobState.RUNNING, JobState.FAILED]
    assert last.state is JobState.FAILED
    assert kube.selectors == ["job-name=digits-x", "ray.io/cluster=digits-cnn-x-raycluster-abcde,ray.io/node-type=head"]
    run = client(uri).get_run(run_id)
    assert run.info.status == "FAILED"
    assert run.data.tags["trainer.k8s.reason"] == "AppFailed" and run.data.tags["trainer.k8s.message"] == "job failed"
    logged = {f.path for f in client(uri).list_artifacts(run_id, "kubernetes")}
    assert logged == {"kubernetes/pod-1.log", "kubernetes/pod-2.log"}


def test_following_a_succeeded_job_closes_its_run(tmp_path, monkeypatch):
    from trainer.tracking.runs import client

    job, kube, uri, run_id = _job(tmp_path, monkeypatch, [status("Running", "RUNNING"), status("Complete", "SUCCEEDED")])
    assert job.wait(poll_s=0) is JobState.SUCCEEDED
    assert client(uri).get_run(run_id).info.status == "FINISHED" and kube.selectors == []


def test_a_job_stuck_initializing_times_out_on_the_client_too(tmp_path, monkeypatch):
    from trainer.errors import JobError

    job, _, _, _ = _job(tmp_path, monkeypatch, [status("Initializing")])
    with pytest.raises(JobError, match="still PENDING after 0s"):
        job.wait(timeout=0, poll_s=0)


class DeletingKube(ReplayKube):
    def __init__(self, statuses):
        super().__init__(statuses)
        self.deleted = []

    def delete_rayjob(self, namespace, name):
        self.deleted.append(f"{namespace}/{name}")


def test_k8s_logs_are_one_text_with_a_header_per_pod(tmp_path, monkeypatch):
    """`logs()` is a str for both handles (JobHandle); the per-pod dict is `pod_logs()`."""
    job, kube, _, _ = _job(tmp_path, monkeypatch, [status("Failed", "FAILED", "AppFailed", "job failed")])
    job.observe()
    text = job.logs()
    assert isinstance(text, str)
    assert text.startswith("==> pod-1 <==\nlogs for job-name=digits-x\n")
    assert "==> pod-2 <==\nlogs for ray.io/cluster=digits-cnn-x-raycluster-abcde" in text


def test_k8s_cancel_deletes_the_rayjob_and_ends_its_run_killed(tmp_path, monkeypatch):
    from trainer.tracking.runs import client

    job, _, uri, run_id = _job(tmp_path, monkeypatch, [status("Running", "RUNNING")])
    kube = DeletingKube([status("Running", "RUNNING")])
    monkeypatch.setattr(job, "_kube", lambda: kube)
    assert job.cancel() is JobState.CANCELLED
    assert kube.deleted == ["ml/digits-x"] and client(uri).get_run(run_id).info.status == "KILLED"


def test_k8s_summary_has_every_metric_and_what_kuberay_said(tmp_path, monkeypatch):
    from trainer.tracking.runs import client

    job, _, uri, run_id = _job(tmp_path, monkeypatch, [status("Failed", "FAILED", "AppFailed", "job failed")])
    for step, (f1, val_acc) in enumerate([(0.5, 0.6), (0.81, 0.9)]):
        client(uri).log_metric(run_id, "f1", f1, step=step)
        client(uri).log_metric(run_id, "val_acc", val_acc, step=step)
    state = job.wait(poll_s=0)
    summary = job.summary(state)
    assert summary["status"] == "FAILED" and summary["metrics"] == {"f1": 0.81, "val_acc": 0.9}
    assert summary["reason"] == "AppFailed job failed" and summary["deployment_status"] == "Failed"
    assert summary["failure"]["summary"] == "AppFailed job failed"
