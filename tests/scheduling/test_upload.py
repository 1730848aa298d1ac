"""What preflight says Ray would upload as a job's code: the same files Ray's own packaging
takes (UPLOAD_EXCLUDES, every .gitignore / .rayignore relative to its folder), secrets never,
and no symlink followed out of the project (trainer.scheduling.upload)."""
import os
import zipfile

import pytest

from trainer.errors import PreflightError
from trainer.scheduling.preflight import MAX_UPLOAD_BYTES, UPLOAD_EXCLUDES, check_spec, upload_files
from trainer.scheduling.upload import walk
from trainer.spec import load_spec

SECRETS = [".env", ".env.local", "server.key", "tls/cert.pem", "store.p12", ".netrc", ".pypirc", ".git-credentials",
           "keys/id_rsa", "keys/id_ed25519.pub", ".ssh/config", ".aws/credentials", "conf/.kube/config",
           "conf/.docker/config.json", ".gnupg/pubring.kbx"]


def project(root, files: dict[str, str]):
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def spec():
    return load_spec({"name": "j", "framework": "torch", "entrypoint": "train.py:train"})[0]


def sparse(path, size):
    with open(path, "wb") as fh:   # costs no disk
        fh.truncate(size)


def test_secrets_are_never_uploaded_and_lookalike_code_is(tmp_path):
    project(tmp_path, {rel: "secret" for rel in SECRETS})
    project(tmp_path, {"train.py": "def train(ctx): pass\n", "id_map.py": "", "keys/key_names.py": "",
                       "docker/config.json": "{}"})
    assert sorted(p for p, _ in upload_files(tmp_path)) == ["docker/config.json", "id_map.py", "keys/key_names.py",
                                                            "train.py"]


def test_gitignored_files_do_not_count_and_are_not_named(tmp_path):
    project(tmp_path, {"train.py": "def train(ctx): pass\n", ".gitignore": "data/\n*.ckpt\n",
                       "sub/.gitignore": "/local.bin\n", "sub/keep.py": "", ".rayignore": "scratch\n"})
    for rel in ("data/big.bin", "model.ckpt", "sub/local.bin", "scratch"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        sparse(tmp_path / rel, MAX_UPLOAD_BYTES + 1)
    (tmp_path / "local.bin").write_text("x")          # sub/.gitignore's /local.bin is relative to sub/
    assert sorted(p for p, _ in upload_files(tmp_path)) == [".gitignore", ".rayignore", "local.bin", "sub/.gitignore",
                                                            "sub/keep.py", "train.py"]
    assert check_spec(spec(), tmp_path).upload_bytes < 1024
    sparse(tmp_path / "weights.bin", MAX_UPLOAD_BYTES + 1)
    with pytest.raises(PreflightError) as e:
        check_spec(spec(), tmp_path)
    assert "biggest files: weights.bin (100.0 MiB), train.py" in str(e.value)
    assert "big.bin" not in str(e.value) and "model.ckpt" not in str(e.value)


def test_ray_gitignore_switch_is_honoured(tmp_path, monkeypatch):
    project(tmp_path, {"train.py": "", ".gitignore": "notes.txt\n", "notes.txt": "x"})
    assert "notes.txt" not in dict(upload_files(tmp_path))
    monkeypatch.setenv("RAY_RUNTIME_ENV_IGNORE_GITIGNORE", "1")
    assert "notes.txt" in dict(upload_files(tmp_path))


@pytest.mark.parametrize("make, why", [
    (lambda root, out: (root / "data").symlink_to(out), "data is a symlink to .*outside the project"),
    (lambda root, out: (root / "creds").symlink_to(out / "secret.txt"), "creds is a symlink to .*outside the project"),
    (lambda root, out: (root / "pkg" / "loop").symlink_to(root), "pkg/loop is a symlink to a folder that contains it"),
    (lambda root, out: os.mkfifo(root / "pipe"), "pipe is not a regular file or folder"),
])
def test_what_ray_would_follow_out_of_the_project_is_refused(tmp_path, make, why):
    root, out = tmp_path / "proj", tmp_path / "outside"
    project(out, {"secret.txt": "do not upload"})
    project(root, {"train.py": "def train(ctx): pass\n", "pkg/m.py": ""})
    make(root, out)
    with pytest.raises(PreflightError, match=why) as e:
        check_spec(spec(), root)
    assert e.value.exit_code == 3
    # Ignored, it is not uploaded, so not refused either.
    (root / ".gitignore").write_text("data\ncreds\npkg/loop\npipe\n")
    check_spec(spec(), root)


def test_a_link_inside_the_project_is_uploaded_like_ray_does(tmp_path):
    project(tmp_path, {"train.py": "", "lib/util.py": "x = 1\n"})
    (tmp_path / "util.py").symlink_to(tmp_path / "lib" / "util.py")
    (tmp_path / "lib2").symlink_to("lib")
    assert sorted(dict(upload_files(tmp_path))) == ["lib/util.py", "lib2/util.py", "train.py", "util.py"]


def test_the_same_files_as_rays_own_packaging(tmp_path):
    """Ray's zip of the folder (what `working_dir` uploads) holds exactly the files preflight counts."""
    from ray._private.runtime_env.packaging import _zip_files

    root = project(tmp_path / "proj", {rel: "s" for rel in SECRETS})
    project(root, {"train.py": "", ".gitignore": "*.log\nbuild/\n!keep.log\n", "a.log": "", "keep.log": "",
                   "build/x.o": "", "src/.gitignore": "gen_*\n/only_here.py\n", "src/gen_a.py": "",
                   "src/only_here.py": "", "only_here.py": "", "src/deep/gen_b.py": "", "src/deep/ok.py": "",
                   ".rayignore": "notes/\n", "notes/n.md": "", ".venv/lib/x.py": "", "pkg/__pycache__/m.pyc": "",
                   "mlruns/0/meta.yaml": "", "nested/.git/HEAD": ""})
    (root / "lnk.py").symlink_to(root / "src" / "deep" / "ok.py")
    _zip_files(str(root), UPLOAD_EXCLUDES, str(tmp_path / "pkg.zip"), include_gitignore=True)
    zipped = sorted(n for n in zipfile.ZipFile(tmp_path / "pkg.zip").namelist() if not n.endswith("/"))
    ours = walk(root, UPLOAD_EXCLUDES)
    assert ours.refused == [] and sorted(p for p, _ in ours.files) == zipped
    assert "keep.log" in zipped and "only_here.py" in zipped and "src/deep/ok.py" in zipped


def test_each_job_sends_its_own_package_of_exactly_the_checked_files(tmp_path):
    """Two jobs of one project get two Ray packages (a node unpacks a package under every job
    environment that starts with it: a shared one was deleted under a running job), each holding
    the checked files byte for byte; Ray's submission path sends the zip as it is."""
    from ray._private.runtime_env.packaging import get_uri_for_package
    from ray._private.runtime_env.working_dir import upload_working_dir_if_needed

    from trainer.scheduling.upload import package

    root = project(tmp_path / "proj", {"train.py": "print(1)\n", "lib/util.py": "X = 2\n", ".env": "TOKEN=s\n",
                                       "mlruns/0/meta.yaml": ""})
    files = walk(root, UPLOAD_EXCLUDES).files
    a = package(root, files, tmp_path / "a.zip", "job-a")
    b = package(root, files, tmp_path / "b.zip", "job-b")
    assert get_uri_for_package(a) != get_uri_for_package(b)
    for zipped in (a, b):
        with zipfile.ZipFile(zipped) as zf:
            assert sorted(zf.namelist()) == ["lib/util.py", "train.py"]
            assert all(zf.read(rel) == (root / rel).read_bytes() for rel in zf.namelist())
    sent = []
    env = upload_working_dir_if_needed({"working_dir": str(a)}, include_gitignore=True,
                                       upload_fn=lambda path, excludes, is_file=False: sent.append((path, is_file)))
    assert sent == [(str(a), True)] and env["working_dir"] == get_uri_for_package(a)
