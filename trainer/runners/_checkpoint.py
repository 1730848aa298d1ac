"""The checkpoint format of the tensorflow and mxnet runners: a pickle of a numpy tree in `state.pkl`.

Framework values (TensorFlow tensors and variables: `.numpy()`; MXNet NDArrays: `.asnumpy()`) are
converted to numpy before pickling, so a checkpoint unpickles on any worker and device without
framework state (no strategy, no context) - and without importing the framework at all.
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

CHECKPOINT_FILE = "state.pkl"


def to_numpy_tree(value: Any) -> Any:
    """`value` with every array-like leaf as numpy, recursively through dicts, lists and tuples
    (container types kept); other leaves are returned as they are."""
    if isinstance(value, dict):
        return {k: to_numpy_tree(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_numpy_tree(v) for v in value)
    if callable(getattr(value, "asnumpy", None)):      # mxnet NDArray
        return value.asnumpy()
    if callable(getattr(value, "numpy", None)):        # tf.Tensor, tf.Variable
        return value.numpy()
    return value


def write_state(state: dict, folder: Path) -> None:
    with open(folder / CHECKPOINT_FILE, "wb") as fh:
        pickle.dump(to_numpy_tree(state), fh, protocol=pickle.HIGHEST_PROTOCOL)


def read_state(folder: Path) -> dict:
    with open(folder / CHECKPOINT_FILE, "rb") as fh:
        return pickle.load(fh)
