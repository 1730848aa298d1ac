"""trainer.runtimes.lock: the one lock-file parser, and the readers that rely on it
(the installer's sync step, the tensorflow runner's CPU-only check)."""
from __future__ import annotations

import sys

import pytest

from trainer import runtimes
from trainer.errors import RuntimeNotInstalledError
from trainer.runners.tensorflow import _cpu_only_lock
from trainer.runtimes.installer import _drop_packages_not_in_lock, _Steps
from trainer.runtimes.lock import key_versions, normalize


def _lock(tmp_path, text: str):
    lock = tmp_path / "requirements.lock"
    lock.write_text(text)
    return lock


def test_comments_options_and_blank_lines_are_skipped(tmp_path):
    lock = _lock(tmp_path, "# header == not a pin\n\n   \n-r base.txt\n--extra-index-url https://x/simple\n"
                           "--index-url=https://y\n-c constraints.txt\n  # indented comment\n"
                           "numpy==1.23.5  # trailing comment\n")
    assert runtimes.parse_lock(lock) == {"numpy": "1.23.5"}


def test_extras_and_markers_are_dropped_from_the_pin(tmp_path):
    lock = _lock(tmp_path, "ray[default,train]==2.60.0\n"
                           "tensorflow-cpu==2.21.0 ; sys_platform == 'linux'\n"
                           "onnx==1.17.0;python_version>='3.9'\n"
                           "torch [cpu] == 2.13.0+cpu\n")
    assert runtimes.parse_lock(lock) == {"ray": "2.60.0", "tensorflow-cpu": "2.21.0", "onnx": "1.17.0",
                                         "torch": "2.13.0+cpu"}


def test_names_are_normalized_and_unpinned_lines_ignored(tmp_path):
    lock = _lock(tmp_path, "Tensorflow_CPU==2.21.0\nzope.interface==7.2\nrequests>=2\nsix\n")
    assert runtimes.parse_lock(lock) == {"tensorflow-cpu": "2.21.0", "zope-interface": "7.2"}
    assert normalize("Zope.Interface") == normalize("zope_interface") == "zope-interface"


def test_every_runtime_lock_parses_to_its_framework_pin():
    for name, framework in (("torch", "torch"), ("tensorflow", "tensorflow-cpu"), ("mxnet", "mxnet")):
        pins = runtimes.parse_lock(runtimes.lock_path(name))
        assert pins[framework] and pins["ray"]


def test_key_versions_pick_the_runtime_key_packages():
    spec = runtimes.RUNTIMES["tensorflow"]
    assert key_versions(spec, {"keras": "3.1", "tensorflow-cpu": "2.21.0", "six": "1"}) == {
        "tensorflow-cpu": "2.21.0", "keras": "3.1"}


@pytest.mark.parametrize("text, cpu_only", [
    ("tensorflow_cpu==2.21.0\nray==2.60.0\n", True),
    ("# tensorflow==2.21.0 was the GPU build\ntensorflow-cpu==2.21.0\n", True),
    ("tensorflow[and-cuda]==2.21.0\n", False),
    ("tensorflow-cpu==2.21.0\ntensorflow[and-cuda]==2.21.0\n", False),
    ("ray==2.60.0\n", False),
])
def test_tensorflow_runner_reads_the_cpu_only_pin_through_parse_lock(tmp_path, monkeypatch, text, cpu_only):
    lock = _lock(tmp_path, text)
    monkeypatch.setattr(runtimes, "lock_path", lambda name: lock)
    assert _cpu_only_lock() is cpu_only


def test_tensorflow_runner_without_a_lock_is_not_cpu_only(tmp_path, monkeypatch):
    monkeypatch.setattr(runtimes, "lock_path", lambda name: tmp_path / "missing.lock")
    assert _cpu_only_lock() is False


def test_sync_uninstalls_only_what_the_lock_no_longer_pins():
    pins = runtimes.parse_lock(runtimes.lock_path("mxnet"))
    kept = next(iter(pins))
    calls = []
    stamp = {"freeze": [f"{kept}=={pins[kept]}", "Old_Package==1.0", "gone.pkg==2"]}
    _drop_packages_not_in_lock(lambda what, cmd: calls.append((what, cmd)), "py", "mxnet", stamp)
    assert calls == [("removing 2 package(s) no longer in the lock",
                      ["py", "-m", "pip", "uninstall", "-y", "Old_Package", "gone.pkg"])]
    calls.clear()
    _drop_packages_not_in_lock(lambda what, cmd: calls.append((what, cmd)), "py", "mxnet",
                               {"freeze": [f"{kept}=={pins[kept]}"]})
    assert calls == []


def test_a_failed_install_step_is_one_line_naming_the_step_and_the_log(tmp_path):
    said = []
    with _Steps("mxnet", tmp_path / "mxnet.install.log", said.append) as step:
        assert step("saying hi", [sys.executable, "-c", "print('hi')"]) == "hi\n"
        with pytest.raises(RuntimeNotInstalledError) as err:
            step("breaking", [sys.executable, "-c", "print('first'); print('the cause'); print(); raise SystemExit(3)"])
    log = tmp_path / "mxnet.install.log"
    assert str(err.value) == f"runtime 'mxnet': breaking failed: the cause (full log: {log})"
    assert said == ["saying hi", "breaking"]
    text = log.read_text()
    assert "print('hi')" in text and "hi\n" in text and "the cause\n" in text
