"""Shared fixtures for the conversion tests: a trained digits CNN, its calibration data, a CLI."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="session")
def digits_trained():
    """(the trained DigitsCNN module, its test accuracy): the native reference of the tests."""
    from _torch_models import train_digits_cnn

    return train_digits_cnn()


@pytest.fixture(scope="session")
def digits_cnn(tmp_path_factory, digits_trained):
    """(model path: the trained CNN as a torch.export .pt2, calibration .npz with held-out digits +
    labels, native test accuracy)."""
    import torch
    from _torch_models import digits, save_exported

    model, acc = digits_trained
    d = tmp_path_factory.mktemp("digits")
    save_exported(model, d / "digits_cnn.pt2", torch.zeros(4, 1, 8, 8))
    (xtr, ytr), (xte, yte) = digits()
    # First half calibrates (training images), second half is held out: see sources.split.
    n = len(xte)
    np.savez(d / "calib.npz", x=np.concatenate([xtr[:n], xte]), y=np.concatenate([ytr[:n], yte]))
    return d / "digits_cnn.pt2", d / "calib.npz", acc


@pytest.fixture()
def cli():
    """`trainer convert ...` through the real CLI app, run with typer's CliRunner."""
    from typer.testing import CliRunner

    from trainer.cli import app

    runner = CliRunner()
    return lambda *args: runner.invoke(app, ["convert", *map(str, args)])
