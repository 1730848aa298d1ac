"""Which placement groups count as left behind by an ended job (trainer.cluster.reservations), read
from the GCS's own records: Ray's protobuf messages, as its table returns them. Released on a real
cluster: tests/sweeps/test_sweep_cluster.py."""
import pytest

from trainer.cluster import reservations
from trainer.cluster.reservations import Reservation, orphans

ENDED, RUNNING = "02000000", "03000000"
DEAD_ACTOR, LIVE_ACTOR = "aa" * 12 + ENDED, "bb" * 12 + ENDED


def group(name: str, **kw) -> Reservation:
    fields = {"removed": False, "detached": False, "creator_job": ENDED, "creator_actor": DEAD_ACTOR} | kw
    return Reservation(id=name, **fields)


@pytest.mark.parametrize("kept, why", [
    (group("running-job", creator_job=RUNNING), "its job is still running"),
    (group("running-job-driver", creator_job=RUNNING, creator_actor=None), "its job is still running"),
    (group("detached", detached=True), "detached groups outlive their job by design"),
    (group("live-actor", creator_actor=LIVE_ACTOR), "a detached actor that made it still owns it"),
    (group("removed", removed=True), "already removed"),
])
def test_a_group_someone_may_still_own_is_never_an_orphan(kept, why):
    assert orphans([kept], {ENDED}, {DEAD_ACTOR}.__contains__) == [], why


def test_an_ended_jobs_group_whose_creator_is_dead_is_an_orphan():
    left = [group("killed-controller"), group("driver", creator_actor=None),
            group("live", creator_actor=LIVE_ACTOR), group("other-job", creator_job=RUNNING)]
    assert orphans(left, {ENDED}, {DEAD_ACTOR}.__contains__) == ["killed-controller", "driver"]


class _Table:
    """What the GCS accessor returns: serialized gcs_pb2 messages."""

    def __init__(self, groups, jobs):
        self.groups, self.jobs = groups, jobs

    def get_placement_group_table(self):
        return [g.SerializeToString() for g in self.groups]

    def get_job_table(self, **_):
        return [j.SerializeToString() for j in self.jobs]


def test_the_gcs_records_are_read_as_ray_writes_them(monkeypatch):
    """Ids, states and the creator actor (nil when the job's driver made the group) from real
    PlacementGroupTableData / JobTableData messages; the released ids are Ray's hex ids."""
    import ray
    from ray.core.generated import gcs_pb2

    Table = gcs_pb2.PlacementGroupTableData
    job = ray.JobID.from_hex(ENDED)
    actor = ray.ActorID.of(job, ray.TaskID.for_driver_task(job), 1)
    by_actor, by_driver, gone = (ray.PlacementGroupID.of(job) for _ in range(3))
    table = _Table(
        groups=[Table(placement_group_id=by_actor.binary(), state=Table.CREATED, creator_job_id=job.binary(),
                      creator_actor_id=actor.binary(), is_detached=False),
                Table(placement_group_id=by_driver.binary(), state=Table.CREATED, creator_job_id=job.binary(),
                      creator_actor_id=ray.ActorID.nil().binary(), is_detached=False),
                Table(placement_group_id=gone.binary(), state=Table.REMOVED, creator_job_id=job.binary(),
                      is_detached=True)],
        jobs=[gcs_pb2.JobTableData(job_id=job.binary(), is_dead=True),
              gcs_pb2.JobTableData(job_id=ray.JobID.from_hex(RUNNING).binary(), is_dead=False)])
    monkeypatch.setattr(reservations, "_accessor", lambda: table)

    assert reservations._groups() == [
        Reservation(by_actor.hex(), removed=False, detached=False, creator_job=ENDED, creator_actor=actor.hex()),
        Reservation(by_driver.hex(), removed=False, detached=False, creator_job=ENDED, creator_actor=None),
        Reservation(gone.hex(), removed=True, detached=True, creator_job=ENDED, creator_actor=None)]
    assert reservations._ended_jobs() == {ENDED}

    released: list[str] = []
    monkeypatch.setattr(reservations, "_actor_dead", lambda a: a == actor.hex())
    monkeypatch.setattr(reservations, "release", released.extend)
    assert reservations.release_orphans() == [by_actor.hex(), by_driver.hex()] == released


def test_a_failed_check_says_so_and_never_fails_the_job(monkeypatch, capsys):
    def unreachable():
        raise ConnectionError("GCS at 10.0.0.1:6379 did not answer\nmore")

    monkeypatch.setattr(reservations, "_accessor", unreachable)
    assert reservations.release_orphans() == []
    assert capsys.readouterr().err == ("warning: could not check for placement groups left by ended jobs: "
                                       "GCS at 10.0.0.1:6379 did not answer\n")
