"""The checkpoint format of the tensorflow and mxnet runners: a numpy tree with no pickle in it.

    state.json   the structure: nested dicts, lists and tuples of None / bool / int / float / str,
                 with arrays and bytes standing in as references ({"array": "a3"}, {"bytes": "a4"})
    state.npz    the arrays, one per reference (numpy's zip of .npy files, written and read with
                 pickle off)

Framework values (TensorFlow tensors and variables: `.numpy()`; MXNet NDArrays: `.asnumpy()`) are
converted to numpy first, so a checkpoint loads on any worker and device without framework state
(no strategy, no context) - and without importing the framework at all. Reading one runs no code
from the files: JSON and `np.load(allow_pickle=False)` only, unlike the `pickle.load` this format
replaced (anyone who could write to the checkpoint store could run code in every worker).

A value this format cannot hold (an arbitrary object, an object-dtype array, a dict keyed by
something other than a str/int/float/bool/None) is refused by `write_state` with its path in the
dict, before any file is written, so `ctx.report(..., checkpoint=...)` fails at once and says
what to change instead of leaving a checkpoint that cannot be restored.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

STRUCTURE_FILE = "state.json"
ARRAYS_FILE = "state.npz"
CHECKPOINT_FILES = (STRUCTURE_FILE, ARRAYS_FILE)
FORMAT = "trainer-state"
FORMAT_VERSION = 1
_SCALARS = (type(None), bool, int, float, str)
_TAGS = ("dict", "list", "tuple", "array", "scalar", "bytes")


class UnrepresentableState(TypeError):
    """A checkpoint value that has no pickle-free representation; the message names its path."""


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
    """Write `state` as `state.json` + `state.npz` into `folder` (UnrepresentableState if some
    value cannot be stored without pickle; nothing is written then)."""
    import numpy as np

    arrays: dict[str, Any] = {}
    tree = _encode(to_numpy_tree(state), arrays, "checkpoint")
    with open(Path(folder) / ARRAYS_FILE, "wb") as fh:
        np.savez(fh, **arrays)
    (Path(folder) / STRUCTURE_FILE).write_text(json.dumps({"format": FORMAT, "version": FORMAT_VERSION,
                                                           "tree": tree}))


def read_state(folder: Path) -> Any:
    """The tree `write_state` wrote (arrays as numpy, bytes as bytes, tuples as tuples)."""
    import numpy as np

    doc = json.loads((Path(folder) / STRUCTURE_FILE).read_text())
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or doc.get("version") != FORMAT_VERSION:
        raise ValueError(f"{STRUCTURE_FILE} is not a {FORMAT} v{FORMAT_VERSION} document")
    with np.load(Path(folder) / ARRAYS_FILE, allow_pickle=False) as npz:
        arrays = {name: npz[name] for name in npz.files}
    return _decode(doc["tree"], arrays)


def _encode(value: Any, arrays: dict, path: str):
    import numpy as np

    if isinstance(value, _SCALARS):
        return value
    if isinstance(value, dict):
        items = []
        for k, v in value.items():
            if not isinstance(k, _SCALARS):
                raise UnrepresentableState(f"{path}: a key of type {type(k).__name__} cannot be stored "
                                           f"in a checkpoint (keys must be str, int, float, bool or None)")
            items.append([k, _encode(v, arrays, f"{path}[{k!r}]")])
        return {"dict": items}
    if isinstance(value, (list, tuple)):
        tag = "list" if isinstance(value, list) else "tuple"
        return {tag: [_encode(v, arrays, f"{path}[{i}]") for i, v in enumerate(value)]}
    if isinstance(value, (bytes, bytearray)):
        return {"bytes": _add(arrays, np.frombuffer(bytes(value), dtype=np.uint8))}
    if isinstance(value, (np.ndarray, np.generic)):
        arr = np.asarray(value)
        if arr.dtype.hasobject:
            raise UnrepresentableState(f"{path}: an object-dtype array cannot be stored without pickle; "
                                       f"convert it to a numeric array")
        return {"array" if isinstance(value, np.ndarray) else "scalar": _add(arrays, arr)}
    raise UnrepresentableState(
        f"{path}: a {type(value).__module__}.{type(value).__qualname__} cannot be stored in a checkpoint "
        f"without pickle; use numpy arrays, framework tensors, numbers, strings, bytes, lists, tuples "
        f"and dicts")


def _add(arrays: dict, arr) -> str:
    name = f"a{len(arrays)}"
    arrays[name] = arr
    return name


def _decode(node: Any, arrays: dict):
    if isinstance(node, _SCALARS):
        return node
    if isinstance(node, dict) and len(node) == 1:
        (tag, body), = node.items()
        if tag == "dict" and isinstance(body, list):
            out = {}
            for item in body:
                if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], _SCALARS)):
                    raise ValueError(f"{STRUCTURE_FILE}: a malformed dict entry")
                out[item[0]] = _decode(item[1], arrays)
            return out
        if tag in ("list", "tuple") and isinstance(body, list):
            items = [_decode(v, arrays) for v in body]
            return items if tag == "list" else tuple(items)
        if tag in ("array", "scalar", "bytes") and isinstance(body, str):
            if body not in arrays:
                raise ValueError(f"{STRUCTURE_FILE} refers to array {body!r}, which {ARRAYS_FILE} lacks")
            arr = arrays[body]
            if tag == "bytes":
                return arr.tobytes()
            return arr[()] if tag == "scalar" else arr
    raise ValueError(f"{STRUCTURE_FILE}: unexpected node {str(node)[:80]!r} (tags: {', '.join(_TAGS)})")
