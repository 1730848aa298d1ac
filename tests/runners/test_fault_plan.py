"""The fault drills' kill plans (tests/runners/test_resume_faults.py), checked without a cluster:
by default each drill kills once at each point of its share and nowhere twice (a repeated kill
point proves nothing new and costs a worker-group restart), the two torch drills together cover
every (rank, phase), and TRAINER_FAULT_KILLS still asks for a longer drill."""
import os
import random

import pytest

import test_resume_faults as drills


@pytest.mark.parametrize("seed", [0, 1, 7, 12345])
@pytest.mark.skipif(bool(os.environ.get("TRAINER_FAULT_KILLS")), reason="TRAINER_FAULT_KILLS asks for longer drills")
def test_each_drill_kills_once_per_point_of_its_share(seed):
    plans = {name: drill.plan for name, drill in drills._drills(seed).items()}
    epoch_plan = plans["torch-epoch"]
    # The corrupt kill comes last, at epoch 2 (epoch 1's checkpoint to fall back to): rank 0's
    # "after" point of the torch-epoch drill's share.
    assert epoch_plan[-1] == drills.CORRUPT
    covered = []
    for must, plan in ((drills.MUST_A, plans["torch-no-step"]), (drills.MUST_B, epoch_plan[:-1])):
        points = [(f["rank"], f["phase"]) for f in plan]
        assert sorted(points) == sorted(must)
        assert all(0 <= f["epoch"] < drills.EPOCHS - 2 for f in plan)
        assert all(0 <= f["batch"] < drills.BATCHES for f in plan if f["phase"] == "step")
        covered += points
    covered.append((0, "after"))
    assert sorted(covered) == sorted((r, p) for r, phases in drills.PHASES.items() for p in phases)


def test_trainer_fault_kills_asks_for_a_longer_drill(monkeypatch):
    monkeypatch.setattr(drills, "FAULTS", 10)
    plan = drills.fault_plan(random.Random(3), drills.MUST_A)
    points = [(f["rank"], f["phase"]) for f in plan]
    assert len(plan) == 10 and set(drills.MUST_A) <= set(points)
