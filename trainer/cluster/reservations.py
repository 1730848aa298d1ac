"""Placement groups Ray leaves reserved after the job that made them has ended, and their release.

Ray removes a placement group once its creator job and its creator actor are both dead (the GCS
marks each death on the groups it has registered). An actor killed while its group is still being
registered, a Ray Train controller that Tune tears down in the middle of starting its worker group,
dies before the group is registered: the group's "creator actor dead" mark is never set, so it
stays reserved with no owner, for good. Seen here: a finished sweep's group holding 1 CPU of the
2-CPU node, and every later job's workers waiting on that CPU.

Every job's driver releases such orphans before it schedules its own workers (`release_orphans`),
so one leak costs nobody more than the time until the next job starts. A group is an orphan only
when Ray's own rule says it should already be gone: not detached, its creator job has ended, and
its creator (the job's driver, or an actor) is dead. A running job's groups, a detached group, and
a group whose creator is a live actor are never touched.

Called inside a Ray job (the driver is connected); reads the GCS tables Ray's own `ray.util.state`
reads, through `ray._private.state` because only there does a group name its creator actor."""
from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass

from trainer.errors import first_line


@dataclass(frozen=True)
class Reservation:
    """One placement group as the GCS keeps it (gcs_pb2.PlacementGroupTableData)."""
    id: str
    removed: bool
    detached: bool
    creator_job: str
    creator_actor: str | None       # None: the job's driver made it


def orphans(groups: list[Reservation], ended_jobs: set[str], actor_dead: Callable[[str], bool]) -> list[str]:
    """The ids of `groups` Ray should have removed already (see the module's docstring);
    `actor_dead` is asked only about the creators of groups otherwise orphaned."""
    return [g.id for g in groups
            if not g.removed and not g.detached and g.creator_job in ended_jobs
            and (g.creator_actor is None or actor_dead(g.creator_actor))]


def held_by(job: str) -> list[str]:
    """The ids of the placement groups the Ray job `job` (hex) made that are not removed."""
    return [g.id for g in _groups() if g.creator_job == job and not g.removed]


def release(ids: list[str]) -> None:
    import ray
    from ray.util.placement_group import PlacementGroup, remove_placement_group

    for pg_id in ids:
        remove_placement_group(PlacementGroup(ray.PlacementGroupID.from_hex(pg_id)))


def release_orphans() -> list[str]:
    """Remove the placement groups of ended jobs that nothing owns any more; their ids. Prints one
    line when it released any; an error is printed, never raised (the job is what matters)."""
    try:
        groups = _groups()
        found = orphans(groups, _ended_jobs(), _actor_dead)
        release(found)
    except Exception as e:      # noqa: BLE001 - housekeeping must not fail the job it runs in
        print(f"warning: could not check for placement groups left by ended jobs: {first_line(e)}",
              file=sys.stderr, flush=True)
        return []
    if found:
        jobs = sorted({g.creator_job for g in groups if g.id in found})
        print(f"released {len(found)} placement group(s) left reserved by ended Ray job(s) "
              f"{', '.join(jobs)}", flush=True)
    return found


def _accessor():
    from ray._private.state import state

    return state._connect_and_get_accessor()


def _groups() -> list[Reservation]:
    import ray
    from ray.core.generated import gcs_pb2

    out = []
    for raw in _accessor().get_placement_group_table():
        pg = gcs_pb2.PlacementGroupTableData.FromString(raw)
        actor = ray.ActorID(pg.creator_actor_id) if pg.creator_actor_id else None
        out.append(Reservation(
            id=pg.placement_group_id.hex(), removed=pg.state == gcs_pb2.PlacementGroupTableData.REMOVED,
            detached=pg.is_detached, creator_job=pg.creator_job_id.hex(),
            creator_actor=None if actor is None or actor.is_nil() else actor.hex()))
    return out


def _ended_jobs() -> set[str]:
    from ray.core.generated import gcs_pb2

    table = _accessor().get_job_table(skip_submission_job_info_field=True, skip_is_running_tasks_field=True)
    return {job.job_id.hex() for job in map(gcs_pb2.JobTableData.FromString, table) if job.is_dead}


def _actor_dead(actor_id: str) -> bool:
    from ray._private.state import actors

    info = actors(actor_id=actor_id)
    return not info or info.get("State") == "DEAD"


def live_actors(job) -> list[str]:
    """The ids of the actors of `job` (a ray.JobID) that are not dead, detached ones (which
    outlive their job by design) aside."""
    from ray._private.state import actors

    return [a["ActorID"] for a in actors(job_id=job).values()
            if a["State"] != "DEAD" and not a["IsDetached"]]
