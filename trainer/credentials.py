"""Credentials stay where they belong: out of everything trainer prints or records.

A URI may carry `user:password@` (an MLflow server behind basic auth, a Ray dashboard behind a
proxy). `redact(uri)` / `redact_text(text)` hide that (and secret-looking query values) wherever
a URI is printed or stored: MLflow tags, Ray job metadata, `--output json`, progress lines, error
messages. `split_credentials(uri)` takes them out of an http(s) tracking URI, so a job gets the
clean URI and its credentials as MLflow's own variables (MLFLOW_TRACKING_USERNAME/PASSWORD).

`FORWARDED_ENV` is the allow-list of variables that reach a job on the local cluster by name (see
`trainer.api.submit` and the README for why only there).
"""
from __future__ import annotations

import os
import re
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

MASK = "***"

# What a job needs to reach its MLflow store and artifact store; values never go into metadata.
FORWARDED_ENV = (
    "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN",
    "MLFLOW_TRACKING_INSECURE_TLS", "MLFLOW_TRACKING_SERVER_CERT_PATH", "MLFLOW_TRACKING_CLIENT_CERT_PATH",
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_REGION", "AWS_DEFAULT_REGION",
    "MLFLOW_S3_ENDPOINT_URL",
)
# Of those, the ones whose values are secret (masked if they ever show up in text).
SECRET_ENV = ("MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")

_SECRET_QUERY = re.compile(r"token|passw|secret|signature|^sig$|credential|api[_-]?key|access[_-]?key|auth",
                           re.IGNORECASE)
# scheme://userinfo@ inside free text (userinfo holds no '/', '@' or whitespace: those are %-encoded)
_USERINFO = re.compile(r"\b([a-zA-Z][a-zA-Z0-9+.-]*://)[^/\s@'\"<>]+@")


def redact(uri: str | None) -> str | None:
    """`uri` with its userinfo (`user:password@`) and secret-looking query values masked."""
    if not uri or "://" not in uri:
        return uri
    try:
        parts = urlsplit(uri)
    except ValueError:
        return redact_text(uri)
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{MASK}@{netloc.rsplit('@', 1)[1]}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(_SECRET_QUERY.search(k) for k, _ in pairs):
            query = urlencode([(k, MASK if _SECRET_QUERY.search(k) else v) for k, v in pairs], safe="*")
    if netloc == parts.netloc and query == parts.query:
        return uri
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def redact_text(text: str, environ: dict[str, str] | None = None) -> str:
    """Free text (an error message, a log line, a spec as JSON) with every URI's userinfo masked,
    and the values of the secret variables of `SECRET_ENV` set in `environ` (default: this
    process's environment) masked wherever they appear."""
    if not text:
        return text
    text = _USERINFO.sub(lambda m: f"{m.group(1)}{MASK}@", text)
    env = os.environ if environ is None else environ
    for name in SECRET_ENV:
        value = env.get(name)
        if value and len(value) >= 4 and value in text:
            text = text.replace(value, MASK)
    return text


def split_credentials(uri: str) -> tuple[str, dict[str, str]]:
    """(the URI without `user:password@`, MLflow's variables carrying them) for an http(s) URI;
    any other URI is returned as it is, with no variables (a database URI needs its credentials
    inline: MLflow has no variables for those)."""
    try:
        parts = urlsplit(uri)
    except ValueError:
        return uri, {}
    if parts.scheme not in ("http", "https") or "@" not in parts.netloc:
        return uri, {}
    userinfo, host = parts.netloc.rsplit("@", 1)
    user, _, password = userinfo.partition(":")
    env = {"MLFLOW_TRACKING_USERNAME": unquote(user)} if user else {}
    if password:
        env["MLFLOW_TRACKING_PASSWORD"] = unquote(password)
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment)), env


def has_credentials(uri: str | None) -> bool:
    return bool(uri) and redact(uri) != uri


def forwarded_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The allow-listed variables set in `environ` (default: this process's environment)."""
    env = os.environ if environ is None else environ
    return {name: env[name] for name in FORWARDED_ENV if env.get(name)}
