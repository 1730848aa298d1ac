"""trainer.runtimes.lock: the one lock-file parser (trainer/runtimes/lockfile.py), its build
variants, and the readers that rely on it (the installer's sync step, preflight's GPU check)."""
from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from trainer import runtimes
from trainer.errors import RuntimeNotInstalledError
from trainer.runtimes.installer import _drop_packages_not_in_lock, _Steps
from trainer.runtimes import lockfile
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


VARIANT_LOCK = ("# header\ntensorflow_cpu==2.21.0\nray[train]==2.60.0\n"
                "#@ ---- variant gpu ----\n"
                "#@gpu -tensorflow-cpu==2.21.0\n#@gpu +tensorflow[and-cuda]==2.21.0\n"
                "#@gpu +nvidia-cudnn-cu12==9.28.0.42\n")


def test_a_variant_swaps_the_build_and_keeps_every_other_pin(tmp_path):
    lock = _lock(tmp_path, VARIANT_LOCK)
    assert runtimes.parse_lock(lock) == {"tensorflow-cpu": "2.21.0", "ray": "2.60.0"}
    assert runtimes.parse_lock(lock, "gpu") == {"ray": "2.60.0", "tensorflow": "2.21.0",
                                                "nvidia-cudnn-cu12": "9.28.0.42"}
    assert lockfile.requirements(VARIANT_LOCK, "gpu") == [
        "ray[train]==2.60.0", "tensorflow[and-cuda]==2.21.0", "nvidia-cudnn-cu12==9.28.0.42"]
    assert lockfile.variants(VARIANT_LOCK) == {"cpu", "gpu"}


def test_variant_lines_leave_the_digest_of_the_base_alone(tmp_path):
    """An installed venv stays up to date when a variant is declared or changed."""
    base = "# header\ntensorflow_cpu==2.21.0\nray[train]==2.60.0\n"
    assert lockfile.digest(VARIANT_LOCK) == lockfile.digest(base) == hashlib.sha256(base.encode()).hexdigest()
    assert lockfile.digest(base.replace("2.60.0", "2.61.0")) != lockfile.digest(base)


@pytest.mark.parametrize("text, message", [
    ("numpy==1.0\n#@gpu -torch==2.13.0\n", "removes 'torch==2.13.0', which the lock does not pin"),
    ("numpy==1.0\n#@gpu +torch>=2\n", "malformed variant line"),
    ("numpy==1.0\n#@gpu torch==2\n", "malformed variant line"),
])
def test_a_bad_variant_line_is_one_clear_error(text, message):
    with pytest.raises(lockfile.LockFormatError, match=message):
        lockfile.requirements(text, "gpu")
    with pytest.raises(lockfile.LockFormatError, match="no 'tpu' variant"):
        lockfile.requirements("numpy==1.0\n", "tpu")


def test_the_script_the_dockerfiles_run_renders_the_variant_with_the_stdlib_only(tmp_path):
    """`python -I lockfile.py LOCK --variant gpu`: no trainer package, no site-packages."""
    lock = _lock(tmp_path, VARIANT_LOCK)
    script = Path(lockfile.__file__)
    out = subprocess.run([sys.executable, "-I", "-S", str(script), str(lock), "--variant", "gpu"],
                         capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == lockfile.requirements(VARIANT_LOCK, "gpu")
    bad = subprocess.run([sys.executable, "-I", "-S", str(script), str(lock), "--variant", "tpu"],
                         capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert bad.returncode == 2 and bad.stderr.startswith("lockfile: ") and not bad.stdout


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
