"""Shared fixtures for the conversion tests: a trained digits CNN, its calibration data, a CLI."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="session")
def digits_cnn(tmp_path_factory):
    """(model path, calibration .npz with held-out digits + labels, native test accuracy)."""
    import torch
    from _torch_models import digits, train_digits_cnn

    model, acc = train_digits_cnn()
    d = tmp_path_factory.mktemp("digits")
    torch.save(model, d / "digits_cnn.pt")
    (xtr, ytr), (xte, yte) = digits()
    # First half calibrates (training images), second half is held out: see sources.split.
    n = len(xte)
    np.savez(d / "calib.npz", x=np.concatenate([xtr[:n], xte]), y=np.concatenate([ytr[:n], yte]))
    return d / "digits_cnn.pt", d / "calib.npz", acc


@pytest.fixture()
def cli():
    """`trainer convert ...` through the real CLI app, run with typer's CliRunner."""
    from typer.testing import CliRunner

    from trainer.cli import app

    runner = CliRunner()
    return lambda *args: runner.invoke(app, ["convert", *map(str, args)])
