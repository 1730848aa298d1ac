"""The local cluster's door, without a cluster: its token file (0600, new at each start, refused
once others can read it), its private folders (0700, owner checked), Ray's temp dir (never a
predictable shared path) and which token goes to which address (trainer.cluster.auth)."""
import json
import os
import stat

import pytest

from trainer.cluster import auth
from trainer.cluster.local import MAX_TEMP_DIR_LEN, private_temp_dir
from trainer.errors import ClusterError


def mode(path):
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_the_token_file_is_created_0600_whatever_the_umask(tmp_path):
    old = os.umask(0)
    try:
        first = auth.create_token(tmp_path / "c" / "auth_token")
        second = auth.create_token(tmp_path / "c" / "auth_token")
    finally:
        os.umask(old)
    assert mode(tmp_path / "c" / "auth_token") == 0o600 and mode(tmp_path / "c") == 0o700
    assert len(first) == 64 and first != second                      # new at every start
    assert auth.read_own_token(tmp_path / "c" / "auth_token") == second


def test_a_token_others_can_read_is_refused(tmp_path):
    path = tmp_path / "auth_token"
    auth.create_token(path)
    path.chmod(0o644)
    with pytest.raises(ClusterError, match="readable by others or not yours"):
        auth.read_own_token(path)
    path.unlink()
    path.symlink_to(tmp_path / "elsewhere")
    (tmp_path / "elsewhere").write_text("x" * 64)
    with pytest.raises(ClusterError, match="cannot read the cluster's token"):
        auth.read_own_token(path)                                      # a link is not followed


def test_private_dir_closes_an_own_folder_and_refuses_others(tmp_path):
    own = tmp_path / "open"
    own.mkdir(mode=0o755)
    os.chmod(own, 0o755)
    assert mode(auth.private_dir(own)) == 0o700
    link = tmp_path / "link"
    link.symlink_to(own)
    with pytest.raises(ClusterError, match="is a link or not a folder"):
        auth.private_dir(link)
    if os.getuid() != 0:
        pytest.skip("only root can give a folder to someone else")
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o700)
    os.chown(theirs, 4242, 4242)
    with pytest.raises(ClusterError, match="belongs to uid 4242"):
        auth.private_dir(theirs)


def test_ray_temp_dir_is_private_and_never_a_predictable_tmp_path(tmp_path):
    short = tmp_path / "c"
    if len(str(short / "ray")) <= MAX_TEMP_DIR_LEN:
        assert private_temp_dir(short, create=True) == short / "ray" and mode(short) == 0o700
    deep = tmp_path / ("x" * 60) / "cluster"
    assert private_temp_dir(deep) is None                              # nothing recorded yet
    first = private_temp_dir(deep, create=True)
    assert str(first.parent).startswith("/tmp/trainer-") and first.name == "ray"  # mkdtemp: a random name
    assert mode(first.parent) == 0o700 and os.lstat(first.parent).st_uid == os.getuid()
    assert os.readlink(deep / "ray") == str(first) and private_temp_dir(deep) == first   # found again
    # A recorded folder that is not private any more is not used: a new random one is made.
    os.chmod(first.parent, 0o755)
    assert private_temp_dir(deep) is None
    second = private_temp_dir(deep, create=True)
    assert second != first and mode(second.parent) == 0o700
    for made in (first, second):
        os.rmdir(made.parent)


def test_which_token_goes_to_which_address(isolated_home, monkeypatch):
    monkeypatch.delenv(auth.ENV_TOKEN, raising=False)
    monkeypatch.delenv(auth.ENV_TOKEN_PATH, raising=False)
    assert auth.token_for("http://127.0.0.1:8265") is None            # no local cluster, no variables
    local = auth.create_token(auth.token_path())
    (auth.cluster_dir() / auth.STATE_FILE).write_text(json.dumps({"dashboard_url": "http://127.0.0.1:8265"}))
    assert auth.token_for("http://127.0.0.1:8265") == local
    assert auth.token_for("http://10.0.0.5:8265") is None              # the local token goes nowhere else
    monkeypatch.setenv(auth.ENV_TOKEN_PATH, str(isolated_home.parent / "remote_token"))
    (isolated_home.parent / "remote_token").write_text("remote-from-file\n")
    assert auth.token_for("https://head.example.com:8265") == "remote-from-file"
    monkeypatch.setenv(auth.ENV_TOKEN, "remote-from-env")
    assert auth.headers_for("https://head.example.com:8265") == {"Authorization": "Bearer remote-from-env"}
    assert auth.token_for("http://127.0.0.1:8265") == local
    monkeypatch.delenv(auth.ENV_TOKEN)
    monkeypatch.setenv(auth.ENV_TOKEN_PATH, str(isolated_home.parent / "missing"))
    with pytest.raises(ClusterError, match="RAY_AUTH_TOKEN_PATH=.*cannot read the Ray token"):
        auth.token_for("https://head.example.com:8265")
