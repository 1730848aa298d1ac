"""What a submission to a remote address says and sends, up to the point where it would reach the
cluster (a `.invalid` host never resolves): a warning for plain http to another host, no credential
values (which variables were withheld is said), a database URI with inline credentials refused, and
no secret in any line printed."""
import pytest
from typer.testing import CliRunner

from trainer.cli import app

SECRET = "pw-PLANTED-41a7"


@pytest.fixture
def spec(tmp_path, isolated_home, monkeypatch):
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)   # conftest's, for the local cluster
    (tmp_path / "train.py").write_text("def train(ctx):\n    pass\n")
    (tmp_path / "job.yaml").write_text("name: remote\nframework: torch\nentrypoint: train.py:train\n")
    return str(tmp_path / "job.yaml")


def submit(spec, address, uri, env=None):
    return CliRunner().invoke(app, ["submit", spec, "--address", address, "--set", f"tracking.uri={uri}"], env=env)


def test_plain_http_to_another_host_is_warned_and_credentials_stay_here(spec, isolated_home):
    result = submit(spec, "http://head.invalid:8265", f"http://alice:{SECRET}@mlflow.invalid:5000",
                    env={"AWS_SECRET_ACCESS_KEY": SECRET + "x"})
    assert result.exit_code == 4                      # the cluster cannot be reached: nothing was created
    lines = result.stderr.splitlines()
    assert lines[0].startswith("warning: http://head.invalid:8265 is plain http to another host")
    assert lines[1] == ("not sent to the remote cluster: AWS_SECRET_ACCESS_KEY, MLFLOW_TRACKING_PASSWORD, "
                        "MLFLOW_TRACKING_USERNAME; its workers take credentials from their own environment")
    assert lines[2].startswith("error: cannot read the node list from http://head.invalid:8265")
    assert SECRET not in result.output + result.stderr
    assert not (isolated_home / "mlflow.db").exists()


@pytest.mark.parametrize("address", ["https://head.invalid:8265", "http://127.0.0.1:1", "http://localhost:1"])
def test_no_warning_for_https_or_loopback(spec, address):
    result = submit(spec, address, "http://mlflow.invalid:5000")
    assert result.exit_code == 4 and "warning" not in result.stderr and "not sent" not in result.stderr


def test_a_database_uri_with_credentials_is_refused_for_a_remote_cluster(spec):
    result = submit(spec, "https://head.invalid:8265", f"postgresql://u:{SECRET}@db.invalid/mlflow")
    assert result.exit_code == 3
    assert result.stderr.startswith("error: the tracking URI postgresql://***@db.invalid/mlflow carries credentials")
    assert SECRET not in result.stderr


def test_a_rayjob_never_carries_inline_credentials(spec):
    result = CliRunner().invoke(app, ["k8s", "render", spec, "--code-uri", "s3://code/p.zip", "--set",
                                      f"tracking.uri=http://alice:{SECRET}@mlflow.ml.svc:5000"])
    assert result.exit_code == 3, result.output
    assert result.stderr.startswith("error: the tracking URI http://***@mlflow.ml.svc:5000 carries credentials")
    assert SECRET not in result.output + result.stderr
    ok = CliRunner().invoke(app, ["k8s", "render", spec, "--code-uri", "s3://code/p.zip", "--set",
                                  "tracking.uri=http://mlflow.ml.svc:5000"])
    assert ok.exit_code == 0 and "kind: RayJob" in ok.stdout
