"""Bearer-token auth (Harbor's, Docker Hub's), against a real docker-registry configured for token
auth and a token service written here (RS256 JWTs with an x5c certificate, the distribution
spec's token format): the client fetches a token per scope set from the challenge's realm with
the credentials, including the two-repository scope a cross-repository mount needs."""
import base64
import datetime
import json
import shutil
import socket
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest

from trainer.errors import RegistryError
from trainer.ports import free_port
from trainer.registry.auth import Credentials
from trainer.registry.client import Registry

pytestmark = pytest.mark.integration
USER, PASSWORD, SERVICE, ISSUER = "robot$ci", "pw-for-test", "test-registry", "test-issuer"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _key_and_cert(folder):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ISSUER)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=1)).sign(key, hashes.SHA256()))
    (folder / "root.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key, cert.public_bytes(serialization.Encoding.DER)


def _token(key, cert_der, access):
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    header = {"alg": "RS256", "typ": "JWT", "x5c": [base64.b64encode(cert_der).decode()]}
    now = int(time.time())
    claims = {"iss": ISSUER, "sub": USER, "aud": SERVICE, "exp": now + 300, "nbf": now - 10, "iat": now,
              "jti": str(now) + str(id(access)), "access": access}
    signing = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    signature = key.sign(signing.encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{signing}.{_b64(signature)}"


@pytest.fixture
def token_registry(tmp_path):
    if shutil.which("docker-registry") is None:
        pytest.skip("docker-registry is not installed (.ci/run installs it)")
    key, cert_der = _key_and_cert(tmp_path)
    asked = []

    class TokenService(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            expected = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
            if self.headers.get("Authorization") != expected:
                self.send_response(401)
                self.end_headers()
                return
            query = parse_qs(urlsplit(self.path).query)
            scopes = query.get("scope", [])
            asked.append(scopes)
            access = []
            for scope in scopes:
                kind, name, actions = scope.split(":")
                access.append({"type": kind, "name": name, "actions": actions.split(",")})
            body = json.dumps({"token": _token(key, cert_der, access)}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), TokenService)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = free_port()
    (tmp_path / "config.yml").write_text(f"""version: 0.1
log: {{level: error, accesslog: {{disabled: true}}}}
storage: {{filesystem: {{rootdirectory: {tmp_path / 'data'}}}}}
http: {{addr: 127.0.0.1:{port}}}
auth:
  token: {{realm: "http://127.0.0.1:{server.server_port}/token", service: {SERVICE}, issuer: {ISSUER},
          rootcertbundle: {tmp_path / 'root.pem'}}}
""")
    proc = subprocess.Popen(["docker-registry", "serve", str(tmp_path / "config.yml")],
                            stdout=subprocess.DEVNULL, stderr=open(tmp_path / "log", "wb"))
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.1)
    yield f"127.0.0.1:{port}", asked
    proc.terminate()
    proc.wait(timeout=10)
    server.shutdown()


def test_bearer_tokens_per_scope_including_a_cross_repository_mount(token_registry):
    address, asked = token_registry
    reg = Registry(address, credentials=Credentials(USER, PASSWORD, "test"))
    layer = reg.push_blob("dev/m", b"weights")
    assert reg.mount_blob("staging/m", layer["digest"], "dev/m") == "mounted"
    assert ["repository:dev/m:pull", "repository:staging/m:pull,push"] in [sorted(s) for s in asked]
    anonymous = Registry(address, credentials=None)
    with pytest.raises(RegistryError, match="refused a token") as err:
        anonymous.push_blob("dev/m", b"other")
    assert PASSWORD not in str(err.value)
