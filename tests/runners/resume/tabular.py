"""scikit-learn's bundled breast-cancer table (569 x 30, binary), standardised, one fixed split.
numpy only, so it imports in every runtime."""
import numpy as np


def load(path):
    raw = np.loadtxt(path, delimiter=",", skiprows=1, dtype=np.float64)
    x, y = raw[:, :-1], raw[:, -1].astype(np.int64)
    order = np.random.default_rng(0).permutation(len(x))
    test, train = order[: len(x) // 5], order[len(x) // 5:]
    mean, std = x[train].mean(axis=0), x[train].std(axis=0) + 1e-8
    x = ((x - mean) / std).astype(np.float32)
    return (x[train], y[train]), (x[test], y[test])


def lr_at(epoch, lr0):
    """The learning-rate schedule the functions report: what a value at step k must equal."""
    return lr0 * 0.9 ** epoch
