"""Credentials out of everything printed or stored: `redact`, `redact_text`, `split_credentials`
and the allow-list of variables a local job gets (trainer.credentials)."""
import pytest

from trainer.credentials import FORWARDED_ENV, forwarded_env, has_credentials, redact, redact_text, split_credentials


@pytest.mark.parametrize("uri, shown", [
    ("http://alice:s3cr3t@mlflow:5000/prefix", "http://***@mlflow:5000/prefix"),
    ("https://tok3n@mlflow.example.com", "https://***@mlflow.example.com"),
    ("postgresql://u:p%40ss@db:5432/mlflow", "postgresql://***@db:5432/mlflow"),
    ("http://a:b@c@host:1/x", "http://***@host:1/x"),                        # '@' in the password
    ("https://host/api?token=abc123&x=1", "https://host/api?token=***&x=1"),
    ("https://host/blob?sig=abc&se=2030", "https://host/blob?sig=***&se=2030"),
    ("http://127.0.0.1:8265", "http://127.0.0.1:8265"),
    ("sqlite:////tmp/trh/mlflow.db", "sqlite:////tmp/trh/mlflow.db"),
    ("file:///tmp/mlruns", "file:///tmp/mlruns"),
    ("databricks", "databricks"),
    (None, None),
])
def test_redact(uri, shown):
    assert redact(uri) == shown
    assert has_credentials(uri) == (uri != shown)


def test_redact_text_masks_uris_and_secret_values_in_free_text():
    env = {"MLFLOW_TRACKING_PASSWORD": "pa55-planted", "MLFLOW_TRACKING_USERNAME": "alice"}
    text = ("API request to http://alice:pa55-planted@127.0.0.1:5000/api/2.0/mlflow/runs/create failed; "
            "retrying with password pa55-planted; see 'https://k:v@h/x' and s3://bucket/key")
    shown = redact_text(text, env)
    assert "pa55-planted" not in shown and "k:v" not in shown
    assert "http://***@127.0.0.1:5000/api/2.0/mlflow/runs/create" in shown and "https://***@h/x" in shown
    assert "s3://bucket/key" in shown and "alice" not in shown
    assert redact_text("no secrets here", env) == "no secrets here"


def test_split_credentials_takes_them_out_of_an_http_uri():
    assert split_credentials("http://alice:p%40ss%3Aw@host:5000/x?y=1") == (
        "http://host:5000/x?y=1", {"MLFLOW_TRACKING_USERNAME": "alice", "MLFLOW_TRACKING_PASSWORD": "p@ss:w"})
    assert split_credentials("https://host") == ("https://host", {})
    # MLflow has no variables for a database's credentials: such a URI stays as it is.
    assert split_credentials("postgresql://u:p@db/mlflow") == ("postgresql://u:p@db/mlflow", {})


def test_only_the_allow_list_is_forwarded():
    env = {"MLFLOW_TRACKING_PASSWORD": "x", "AWS_SECRET_ACCESS_KEY": "y", "HOME": "/root", "GITHUB_TOKEN": "z",
           "MLFLOW_TRACKING_USERNAME": ""}
    assert forwarded_env(env) == {"MLFLOW_TRACKING_PASSWORD": "x", "AWS_SECRET_ACCESS_KEY": "y"}
    assert all(name.startswith(("MLFLOW_", "AWS_")) for name in FORWARDED_ENV)
