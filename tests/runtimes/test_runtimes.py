"""trainer.runtimes: name checks, the not-installed message, stamps and the torch special case.

No venv is built here (that is `trainer runtime install`, exercised by CI and the mxnet tests);
these tests build fake-but-real runtime folders (a stamp and an interpreter link) under a
temporary TRAINER_RUNTIMES.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

from trainer import runtimes
from trainer.errors import RuntimeNotInstalledError, UnknownNameError
from trainer.home import repo_root
from trainer.runtimes.lock import version_matches
from trainer.runtimes.venvs import STAMP


@pytest.fixture
def empty_runtimes(tmp_path, monkeypatch):
    monkeypatch.setenv("TRAINER_RUNTIMES", str(tmp_path / "runtimes"))
    return tmp_path / "runtimes"


def test_unknown_runtime_lists_valid_names(empty_runtimes):
    for call in (runtimes.python_for, runtimes.path, runtimes.install, runtimes.lock_path):
        with pytest.raises(UnknownNameError) as err:
            call("caffe")
        msg = str(err.value)
        assert "'caffe'" in msg and "mxnet, tensorflow, torch" in msg and "\n" not in msg


def test_not_installed_message_names_the_install_command(empty_runtimes):
    with pytest.raises(RuntimeNotInstalledError) as err:
        runtimes.python_for("mxnet")
    assert str(err.value) == "runtime 'mxnet' is not installed; run: trainer runtime install mxnet"
    assert err.value.exit_code == 6


def _fake_runtime(root, name, digest):
    venv = root / name
    (venv / "bin").mkdir(parents=True)
    os.symlink(sys.executable, venv / "bin" / "python")
    (venv / STAMP).write_text(json.dumps(
        {"name": name, "lock_sha256": digest, "python": "3.11.7", "versions": {"mxnet": "1.9.1"}, "freeze": []}))
    return venv


def test_installed_runtime_is_found_fast_and_listed(empty_runtimes):
    venv = _fake_runtime(empty_runtimes, "mxnet", runtimes.lock_digest("mxnet"))
    t0 = time.perf_counter()
    for _ in range(100):
        py = runtimes.python_for("mxnet")
    per_call = (time.perf_counter() - t0) / 100
    assert py == venv / "bin" / "python"
    assert runtimes.path("mxnet") == venv
    assert per_call < 0.01, f"python_for took {per_call * 1e3:.1f} ms per call"
    row = next(r for r in runtimes.list_runtimes() if r.name == "mxnet")
    assert row.installed and row.path == str(venv) and row.versions == {"mxnet": "1.9.1"}
    assert row.lock == "images/mxnet/requirements.lock"


def test_install_is_skipped_when_the_lock_is_unchanged(empty_runtimes):
    _fake_runtime(empty_runtimes, "mxnet", runtimes.lock_digest("mxnet"))
    report = runtimes.install("mxnet")
    assert report.action == "unchanged" and report.seconds < 1


def test_stale_runtime_asks_for_a_reinstall(empty_runtimes):
    _fake_runtime(empty_runtimes, "mxnet", "0" * 64)
    with pytest.raises(RuntimeNotInstalledError) as err:
        runtimes.python_for("mxnet")
    assert "out of date" in str(err.value) and "run: trainer runtime install mxnet" in str(err.value)
    row = next(r for r in runtimes.list_runtimes() if r.name == "mxnet")
    assert not row.installed and "reinstall" in row.note


def test_lock_pins_parse_and_local_versions_match(tmp_path):
    lock = tmp_path / "requirements.lock"
    lock.write_text("# comment\n--extra-index-url x\nNumPy==1.23.5\nray[train]==2.60.0 ; python_version>='3'\n"
                    "torch==2.13.0\n")
    assert runtimes.parse_lock(lock) == {"numpy": "1.23.5", "ray": "2.60.0", "torch": "2.13.0"}
    assert version_matches("2.13.0+cpu", "2.13.0")
    assert not version_matches("2.13.0", "2.13.0+cpu")
    assert not version_matches("1.24.0", "1.23.5")


def test_torch_runtime_is_this_venv_exactly_when_it_satisfies_the_lock(empty_runtimes):
    if not runtimes.lock_path("torch").is_file():
        pytest.skip("images/torch/requirements.lock not written yet")
    unmet = runtimes.unmet_pins("torch")
    if unmet:
        with pytest.raises(RuntimeNotInstalledError):
            runtimes.python_for("torch")
    else:
        assert runtimes.python_for("torch") == Path(sys.executable)
        assert runtimes.install("torch").action == "project-venv"


def test_every_runtime_has_a_lock_next_to_its_dockerfile():
    for name in runtimes.RUNTIMES:
        lock = runtimes.lock_path(name)
        assert lock.parent == repo_root() / "images" / name
        assert (lock.parent / "Dockerfile").is_file(), f"images/{name}/Dockerfile missing"


def test_cli_prints_one_line_errors_with_exit_codes(empty_runtimes):
    from typer.testing import CliRunner

    from trainer.cli import app
    runner = CliRunner()
    missing = runner.invoke(app, ["runtime", "path", "mxnet"])
    assert missing.exit_code == 6
    assert "runtime 'mxnet' is not installed; run: trainer runtime install mxnet" in missing.output
    unknown = runner.invoke(app, ["runtime", "install", "caffe"])
    assert unknown.exit_code == 2 and "valid: mxnet, tensorflow, torch" in unknown.output
    listed = runner.invoke(app, ["runtime", "list", "--output", "json"])
    assert listed.exit_code == 0
    rows = {r["name"]: r for r in json.loads(listed.output)}
    assert set(rows) == {"torch", "tensorflow", "mxnet"} and rows["mxnet"]["installed"] is False
