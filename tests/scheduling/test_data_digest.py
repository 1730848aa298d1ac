"""The data digest pins the data: each file is framed (two datasets never share a digest),
symlinked folders are followed as training follows them (a loop is refused), and the job trains
only on the bytes it digested at submit (a symlink swapped before the job starts fails it)."""
import json
import os
from pathlib import Path

import pytest

from trainer.data import fingerprint, pin
from trainer.errors import JobError, SpecError


def _files(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


def test_two_datasets_that_collided_before_now_differ(tmp_path):
    # One file holding "x\0b\0y" vs two files "x" and "b"->"y": the old unframed stream was
    # "a\0x\0b\0y\0" for both.
    one = _files(tmp_path / "one", {"a": b"x\0b\0y"})
    two = _files(tmp_path / "two", {"a": b"x", "b": b"y"})
    assert fingerprint(str(one), tmp_path).digest != fingerprint(str(two), tmp_path).digest
    # Same bytes, the boundary moved between name and content.
    three = _files(tmp_path / "three", {"ab": b"c"})
    four = _files(tmp_path / "four", {"a": b"bc"})
    assert fingerprint(str(three), tmp_path).digest != fingerprint(str(four), tmp_path).digest


def test_an_edit_in_a_symlinked_subfolder_changes_the_digest(tmp_path):
    shared = _files(tmp_path / "shared", {"part.csv": b"1,2\n"})
    data = _files(tmp_path / "data", {"main.csv": b"0,0\n"})
    (data / "more").symlink_to(shared, target_is_directory=True)
    before = fingerprint(str(data), tmp_path)
    assert before.files == 2 and before.bytes == 8
    (shared / "part.csv").write_bytes(b"1,3\n")
    assert fingerprint(str(data), tmp_path).digest != before.digest


def test_a_symlink_loop_is_refused(tmp_path):
    data = _files(tmp_path / "data", {"sub/x.csv": b"1\n"})
    (data / "sub" / "back").symlink_to(data, target_is_directory=True)
    with pytest.raises(SpecError, match="symlink loop"):
        fingerprint(str(data), tmp_path)


def test_pin_refuses_data_swapped_after_the_digest(tmp_path):
    v1 = _files(tmp_path / "v1", {"x.csv": b"1\n"})
    v2 = _files(tmp_path / "v2", {"x.csv": b"2\n"})
    link = tmp_path / "current"
    link.symlink_to(v1, target_is_directory=True)
    recorded = fingerprint(str(link), tmp_path / "project").digest
    assert pin(str(link), tmp_path / "project", recorded) == v1          # resolved once, to the real path
    link.unlink()
    link.symlink_to(v2, target_is_directory=True)
    with pytest.raises(JobError, match="changed since the job was submitted"):
        pin(str(link), tmp_path / "project", recorded)


TRAIN = """\
from pathlib import Path


def train(ctx):
    ctx.report({"version": float((Path(ctx.data_path) / "x.csv").read_text())})
"""


@pytest.mark.integration
def test_a_job_whose_data_was_swapped_after_submit_fails_clearly(cluster, tmp_path, monkeypatch):
    import trainer
    from trainer.scheduling import preflight
    from trainer.tracking.runs import client

    v1 = _files(tmp_path / "v1", {"x.csv": b"1\n"})
    v2 = _files(tmp_path / "v2", {"x.csv": b"2\n"})
    link = tmp_path / "current"
    link.symlink_to(v1, target_is_directory=True)
    spec = {"name": "swap", "framework": "torch", "entrypoint": "train.py:train", "workers": 1,
            "resources": {"accelerator": "cpu", "cpus_per_worker": 1}, "data": {"path": str(link)},
            "failure": {"max_failures": 0}}
    # The job submitted again runs beside the first: from a copy of the project that differs by a
    # comment, as jobs of one code package share its unpacked folder on this host, which a node's
    # agent may delete when the first job ends (trainer.runners.job._leave_vanished_cwd).
    project, copy = (_files(tmp_path / name, {"train.py": (TRAIN + comment).encode(), "pyproject.toml": b"",
                                              "job.yaml": json.dumps(spec).encode()})
                     for name, comment in (("project", ""), ("again", "# submitted again\n")))

    real_check = preflight.check_spec

    def check_then_swap(*args, **kwargs):      # the digest is taken: now the link moves to v2
        checked = real_check(*args, **kwargs)
        link.unlink()
        link.symlink_to(v2, target_is_directory=True)
        return checked

    monkeypatch.setattr(preflight, "check_spec", check_then_swap)
    job = trainer.submit(str(project / "job.yaml"))      # the session cluster (local)
    # Submitted again while the first runs (the link now stays on v2; two jobs' fixed start costs
    # overlap): the run records v2 and the job trains on it: data outside the project, pinned to
    # its real path in the driver, reaches the workers.
    monkeypatch.setattr(preflight, "check_spec", real_check)
    again = trainer.submit(str(copy / "job.yaml"))
    job.wait(timeout=600)
    assert job.status().value == "FAILED"
    assert "changed since the job was submitted" in job.logs()
    run = client(job.tracking_uri).get_run(job.run_id)
    assert "version" not in run.data.metrics           # it never trained on v2

    again.wait(timeout=600)
    assert again.status().value == "SUCCEEDED", again.logs()[-2000:]
    assert client(again.tracking_uri).get_run(again.run_id).data.metrics["version"] == 2.0
