"""trainer.runners._checkpoint: the tensorflow and mxnet runners' checkpoint format (a pickle of a
numpy tree in state.pkl). Framework values are faked: only their `.numpy()` / `.asnumpy()` matter."""
from __future__ import annotations

import pickle

import numpy as np

from trainer.runners import mxnet, tensorflow
from trainer.runners._checkpoint import CHECKPOINT_FILE, read_state, to_numpy_tree, write_state


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


def test_state_is_a_plain_pickle_of_the_numpy_tree_in_state_pkl(tmp_path):
    write_state({"params": {"w": FakeNDArray(1.5, 2.5)}, "step": [FakeTensor(7)]}, tmp_path)
    assert CHECKPOINT_FILE == "state.pkl" and [p.name for p in tmp_path.iterdir()] == ["state.pkl"]
    with open(tmp_path / "state.pkl", "rb") as fh:
        raw = pickle.load(fh)          # readable without trainer's help: the on-disk format
    back = read_state(tmp_path)
    for state in (raw, back):
        np.testing.assert_array_equal(state["params"]["w"], np.array([1.5, 2.5]))
        np.testing.assert_array_equal(state["step"][0], np.array([7]))


def test_both_runners_checkpoint_through_the_shared_format(tmp_path):
    for module in (tensorflow, mxnet):
        folder = tmp_path / module.__name__
        folder.mkdir()
        context_cls = {tensorflow: tensorflow.TensorflowContext, mxnet: mxnet.MXNetContext}[module]
        ctx = object.__new__(context_cls)     # the hooks use no context state
        ctx._write_checkpoint({"w": FakeTensor(1), "v": FakeNDArray(2)}, folder)
        back = ctx._read_checkpoint(folder)
        assert (folder / "state.pkl").is_file()
        np.testing.assert_array_equal(back["w"], np.array([1]))
        np.testing.assert_array_equal(back["v"], np.array([2]))
