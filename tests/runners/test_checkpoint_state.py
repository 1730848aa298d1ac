"""trainer.runners._checkpoint: the tensorflow and mxnet runners' checkpoint format (a numpy tree
as state.json + state.npz, no pickle). Framework values are faked: only their `.numpy()` /
`.asnumpy()` matter."""
from __future__ import annotations

import json
import pickle

import numpy as np
import pytest

from trainer.runners import mxnet, tensorflow
from trainer.runners._checkpoint import (CHECKPOINT_FILES, UnrepresentableState, read_state, to_numpy_tree,
                                         write_state)


class FakeTensor:           # tf.Tensor / tf.Variable
    def __init__(self, *values):
        self.values = values

    def numpy(self):
        return np.array(self.values)


class FakeNDArray:          # mxnet.nd.NDArray
    def __init__(self, *values):
        self.values = values

    def asnumpy(self):
        return np.array(self.values)


class NotCallable:
    numpy = "an attribute, not a method"
    asnumpy = None


def test_tensors_and_ndarrays_become_numpy_through_nested_containers():
    marker = NotCallable()
    tree = {"weights": [FakeTensor(1, 2), (FakeNDArray(3.0), {"deep": FakeTensor(4)})],
            "epoch": 3, "name": "net", "none": None, "already": np.zeros(2), "odd": marker}
    out = to_numpy_tree(tree)
    assert set(out) == set(tree)
    weights = out["weights"]
    assert type(weights) is list and type(weights[1]) is tuple
    np.testing.assert_array_equal(weights[0], np.array([1, 2]))
    np.testing.assert_array_equal(weights[1][0], np.array([3.0]))
    np.testing.assert_array_equal(weights[1][1]["deep"], np.array([4]))
    assert isinstance(weights[1][1]["deep"], np.ndarray)
    assert out["epoch"] == 3 and out["name"] == "net" and out["none"] is None
    assert out["already"] is tree["already"] and out["odd"] is marker


def test_state_round_trips_through_json_and_npz_without_pickle(tmp_path):
    state = {"params": {"w": FakeNDArray(1.5, 2.5)}, "step": [FakeTensor(7)], "epoch": 3, "lr": 0.1,
             "name": "net", "done": False, "none": None, "nan": float("nan"), "pair": (1, "a"),
             "optimizer": {0: {"momentum": np.ones((2, 2), np.float32)}, 1: {}},
             "blob": b"\x00mxnet-trainer-states\xff", "scalar": np.float32(0.5), "empty": np.zeros((0, 3))}
    write_state(state, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(CHECKPOINT_FILES) == ["state.json", "state.npz"]
    back = read_state(tmp_path)
    np.testing.assert_array_equal(back["params"]["w"], np.array([1.5, 2.5]))
    np.testing.assert_array_equal(back["step"][0], np.array([7]))
    assert back["epoch"] == 3 and type(back["epoch"]) is int and back["lr"] == 0.1 and back["name"] == "net"
    assert back["done"] is False and back["none"] is None and np.isnan(back["nan"])
    assert back["pair"] == (1, "a") and type(back["pair"]) is tuple
    assert list(back["optimizer"]) == [0, 1] and back["optimizer"][0]["momentum"].dtype == np.float32
    assert back["blob"] == state["blob"] and type(back["blob"]) is bytes
    assert back["scalar"] == np.float32(0.5) and isinstance(back["scalar"], np.float32)
    assert back["empty"].shape == (0, 3)
    # The on-disk format is readable without trainer and without unpickling anything.
    doc = json.loads((tmp_path / "state.json").read_text())
    assert doc["format"] == "trainer-state" and doc["version"] == 1
    with np.load(tmp_path / "state.npz", allow_pickle=False) as npz:
        assert len(npz.files) == 6   # w, step, momentum, blob, scalar, empty


@pytest.mark.parametrize("value, where", [
    (object(), r"checkpoint\[.odd.\]: a builtins.object cannot be stored"),
    ({"x": [1, NotCallable()]}, r"checkpoint\['odd'\]\['x'\]\[1\]"),
    (np.array([{"a": 1}], dtype=object), "object-dtype array"),
    ({(1, 2): 3}, "a key of type tuple"),
])
def test_values_without_a_pickle_free_form_are_refused_before_writing(tmp_path, value, where):
    with pytest.raises(UnrepresentableState, match=where):
        write_state({"w": np.zeros(2), "odd": value}, tmp_path)
    assert list(tmp_path.iterdir()) == []


class _Boom:
    def __reduce__(self):
        return (print, ("unpickled: code ran",))


def test_a_planted_pickle_in_the_arrays_file_is_not_unpickled(tmp_path, capsys):
    write_state({"w": np.zeros(2)}, tmp_path)
    # Someone with write access to the checkpoint store swaps in an object array (a pickle).
    with open(tmp_path / "state.npz", "wb") as fh:
        np.savez(fh, a0=np.array([_Boom()], dtype=object))
    with pytest.raises(ValueError, match="allow_pickle"):
        read_state(tmp_path)
    assert "code ran" not in capsys.readouterr().out
    write_state({"w": np.zeros(2)}, tmp_path)
    (tmp_path / "state.json").write_text(json.dumps({"format": "trainer-state", "version": 1,
                                                     "tree": {"eval": "__import__('os')"}}))
    with pytest.raises(ValueError, match="unexpected node"):
        read_state(tmp_path)
    (tmp_path / "state.json").write_bytes(pickle.dumps({"format": "trainer-state"}))
    with pytest.raises(ValueError):
        read_state(tmp_path)


def test_both_runners_checkpoint_through_the_shared_format(tmp_path):
    for module in (tensorflow, mxnet):
        folder = tmp_path / module.__name__
        folder.mkdir()
        context_cls = {tensorflow: tensorflow.TensorflowContext, mxnet: mxnet.MXNetContext}[module]
        ctx = object.__new__(context_cls)     # the hooks use no context state
        ctx._write_checkpoint({"w": FakeTensor(1), "v": FakeNDArray(2)}, folder)
        back = ctx._read_checkpoint(folder)
        assert sorted(p.name for p in folder.iterdir()) == ["state.json", "state.npz"]
        np.testing.assert_array_equal(back["w"], np.array([1]))
        np.testing.assert_array_equal(back["v"], np.array([2]))
