"""A real local Ray cluster for the session: a CPU-only head plus nodes labelled cpu, A100 and T4
(fake accelerator labels are how placement is exercised on one host)."""
import pytest

import trainer


@pytest.fixture(scope="session")
def cluster(trainer_home):
    state, _ = trainer.cluster_up(["cpu:2", "A100:1", "T4:1"])
    yield state
    trainer.cluster_down()
