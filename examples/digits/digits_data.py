"""The digits data every example trains on: the CSV that ships inside scikit-learn (64 pixel
columns 0..16 + the label), one fixed train/test split, so all frameworks see the same test set.
numpy only: it imports in every runtime (the MXNet one pins numpy 1.23)."""
import gzip

import numpy as np

# What a device does to a raw 8x8 image (pixel counts 0..16) before the model sees it, and what
# the model's 10 outputs mean: passed to ctx.save_model, carried into the edge bundle's manifest.
PREPROCESSING = {"scale": 1 / 16}
CLASS_NAMES = [str(d) for d in range(10)]


def load_digits(path, layout="NCHW"):
    """((x_train, y_train), (x_test, y_test)); images scaled to [0, 1], NCHW or NHWC."""
    with gzip.open(path, "rt") as fh:
        raw = np.loadtxt(fh, delimiter=",", dtype=np.float32)
    shape = {"NCHW": (-1, 1, 8, 8), "NHWC": (-1, 8, 8, 1)}[layout]
    x = (raw[:, :64] * PREPROCESSING["scale"]).reshape(shape).astype(np.float32)
    y = raw[:, 64].astype(np.int64)
    order = np.random.default_rng(0).permutation(len(x))  # fixed split: same test set everywhere
    test = order[: len(x) // 5]
    train = order[len(x) // 5:]
    return (x[train], y[train]), (x[test], y[test])
