"""The torch runner's checkpoints: written with torch.save, read with torch.load(weights_only=True),
so a pickled object planted in the checkpoint store cannot run code in a worker. What the digits
example checkpoints (model and optimizer state dicts, the epoch) loads; anything that would need a
full unpickle fails `ctx.report` when it is written."""
import pickle
import sys
from pathlib import Path

import pytest
import torch

from trainer.runners.torch import TorchContext

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "digits"


def hooks() -> TorchContext:
    return object.__new__(TorchContext)   # the checkpoint hooks use no context state


def test_the_digits_examples_checkpoint_round_trips_with_weights_only(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLE))
    from train_torch import DigitsCNN

    torch.manual_seed(0)
    model = DigitsCNN()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)   # as in the example
    torch.nn.functional.cross_entropy(model(torch.rand(8, 1, 8, 8)), torch.arange(8)).backward()
    optimizer.step()
    hooks()._write_checkpoint({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": 4},
                              tmp_path)
    state = hooks()._read_checkpoint(tmp_path)

    again = DigitsCNN()
    again.load_state_dict(state["model"])
    resumed = torch.optim.SGD(again.parameters(), lr=0.05, momentum=0.9)
    resumed.load_state_dict(state["optimizer"])
    assert state["epoch"] == 4
    for a, b in zip(model.parameters(), again.parameters()):
        assert torch.equal(a, b)
    momentum = [s["momentum_buffer"] for s in resumed.state_dict()["state"].values()]
    assert momentum and all(m is not None and m.abs().sum() > 0 for m in momentum)
    sys.modules.pop("train_torch", None)


class Schedule:   # a user object: restoring it would need a full unpickle
    def __init__(self):
        self.lr = 0.1


def test_a_checkpoint_that_needs_unpickling_fails_when_written(tmp_path):
    with pytest.raises(TypeError, match=r"holds a .*Schedule, which can only be restored by unpickling code"):
        hooks()._write_checkpoint({"epoch": 1, "schedule": Schedule()}, tmp_path)


class WritesOnUnpickle:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_planted_pickle_in_the_checkpoint_store_is_not_run_on_restore(tmp_path):
    marker = tmp_path / "marker"
    torch.save({"model": {}, "epoch": WritesOnUnpickle(marker)}, tmp_path / "state.pt")
    marker.unlink(missing_ok=True)
    with pytest.raises(pickle.UnpicklingError):
        hooks()._read_checkpoint(tmp_path)
    assert not marker.exists()
    torch.load(tmp_path / "state.pt", weights_only=False)   # the control: a full unpickle runs it
    assert marker.exists()
