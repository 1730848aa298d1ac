"""One error seam: every TrainerError class in trainer/errors.py, one table (FOREIGN) that maps
foreign exceptions to ours, no classifying by class-name strings, no `except Exception: pass`."""
import ast
import re
import subprocess
from pathlib import Path

import pytest

from trainer import errors
from trainer.errors import (ClusterError, ConversionError, GateError, RegistryError, TrackingError, TrainerError,
                            describe, foreign, ours, translate)

REPO = Path(__file__).resolve().parents[2]
SOURCES = [p for folder in ("trainer", "converters") for p in sorted((REPO / folder).rglob("*.py"))]
OURS = {name for name, obj in vars(errors).items() if isinstance(obj, type) and issubclass(obj, TrainerError)}


def test_every_trainer_error_class_is_in_errors_py():
    elsewhere = []
    for path in SOURCES:
        if path == REPO / "trainer" / "errors.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and any(getattr(b, "id", getattr(b, "attr", None)) in OURS
                                                      for b in node.bases):
                elsewhere.append(f"{path.relative_to(REPO)}:{node.lineno} class {node.name}")
    assert elsewhere == []


def test_exit_codes_kept_where_the_classes_moved():
    from trainer.promotion import transaction
    from trainer.registry import auth

    assert (GateError.exit_code, RegistryError.exit_code) == (10, 11)
    assert auth.RegistryError is RegistryError and transaction.GateError is GateError


def test_no_class_name_strings_and_nothing_swallowed():
    bad = []
    for path in SOURCES:
        lines = path.read_text().splitlines()
        for n, line in enumerate(lines):
            if re.search(r"type\(\w+\)\.__name__\s*(==|in\b)", line):
                bad.append(f"{path.relative_to(REPO)}:{n + 1}: {line.strip()}")
            if re.match(r"\s*except (Exception|BaseException)?\s*(as \w+)?:", line) and n + 1 < len(lines) \
                    and lines[n + 1].strip() == "pass":
                bad.append(f"{path.relative_to(REPO)}:{n + 1}: {line.strip()} / pass")
    assert bad == []


def test_requests_errors_read_as_their_innermost_reason():
    import requests

    try:
        requests.get("http://127.0.0.1:9/v2/", timeout=5)
    except requests.RequestException as e:
        err = e
    assert foreign(err).kind == "unreachable" and describe(err) == "Connection refused"
    assert isinstance(ours(err, "cannot reach the registry at http://127.0.0.1:9", RegistryError), RegistryError)


def test_kubernetes_api_errors_read_as_status_and_message():
    kubernetes = pytest.importorskip("kubernetes")

    e = kubernetes.client.exceptions.ApiException(status=409, reason="Conflict")
    e.body = '{"message": "rayjobs.ray.io \\"x\\" already exists", "code": 409}'
    assert describe(e) == '409 Conflict: rayjobs.ray.io "x" already exists'
    assert foreign(e).error is ClusterError


def test_mlflow_errors_become_tracking_errors_by_the_table():
    from mlflow.exceptions import MlflowException

    with pytest.raises(TrackingError, match="^cannot read run r: Run 'r' not found$") as raised:
        with translate(None, "cannot read run r"):
            raise MlflowException("Run 'r' not found")
    assert isinstance(raised.value.__cause__, MlflowException)


def test_a_failed_command_reads_as_its_exit_code_and_last_stderr_line():
    try:
        subprocess.run(["sh", "-c", "echo noise >&2; echo 'qemu: no such file' >&2; exit 3"], check=True,
                       capture_output=True, text=True)
    except subprocess.CalledProcessError as e:
        err = e
    assert describe(err) == "exit code 3: qemu: no such file"


def test_onnx_decode_errors_become_conversion_errors():
    onnx = pytest.importorskip("onnx")

    with pytest.raises(ConversionError, match="^model.onnx is not a valid ONNX model: "):
        with translate(None, "model.onnx is not a valid ONNX model"):
            onnx.load_from_string(b"\x00not a model")


def test_secrets_never_reach_the_line_or_the_cause():
    with pytest.raises(ClusterError) as raised:
        with translate(ClusterError, "cannot reach", redact=lambda t: t.replace("s3cret", "***")):
            raise ValueError("http://u:s3cret@host refused")
    assert "s3cret" not in str(raised.value) and raised.value.__cause__ is None


def test_ray_authentication_errors_are_found_by_class_not_name():
    ray_exceptions = pytest.importorskip("ray.exceptions")

    assert foreign(ray_exceptions.AuthenticationError("Authentication required")).kind == "unauthorized"

    class AuthenticationError(Exception):   # same name, another class: not Ray's
        pass

    assert foreign(AuthenticationError("x")) is None
