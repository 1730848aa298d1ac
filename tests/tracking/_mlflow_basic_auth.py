"""A small real MLflow tracking server behind HTTP basic auth, for tests whose tracking URI must
carry credentials that actually work: MLflow's own Flask app (the handlers `mlflow server` runs,
artifacts served too) in one werkzeug process, every request checked against the USER:PASSWORD
pairs given (401 otherwise). Who made each request goes to STORE/requests.log (user, method, path).

    python _mlflow_basic_auth.py STORE PORT_FILE USER:PASSWORD [USER:PASSWORD ...]
"""
import base64
import os
import sys
from pathlib import Path

store, port_file, pairs = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]
os.environ["_MLFLOW_SERVER_FILE_STORE"] = f"sqlite:///{store / 'mlflow.db'}"
os.environ["_MLFLOW_SERVER_SERVE_ARTIFACTS"] = "true"
os.environ["_MLFLOW_SERVER_ARTIFACT_ROOT"] = "mlflow-artifacts:/"
os.environ["_MLFLOW_SERVER_ARTIFACT_DESTINATION"] = str(store / "artifacts")

from mlflow.server import app  # noqa: E402  (reads the variables above)
from werkzeug.serving import make_server  # noqa: E402

USERS = {"Basic " + base64.b64encode(p.encode()).decode(): p.split(":", 1)[0] for p in pairs}
LOG = (store / "requests.log").open("a", buffering=1)


def guarded(environ, start_response):
    user = USERS.get(environ.get("HTTP_AUTHORIZATION", ""))
    LOG.write(f"{user or '-'} {environ['REQUEST_METHOD']} {environ.get('PATH_INFO', '')}\n")
    if user is None:
        start_response("401 Unauthorized", [("WWW-Authenticate", 'Basic realm="mlflow"'),
                                            ("Content-Type", "text/plain")])
        return [b"unauthorized"]
    return app(environ, start_response)


server = make_server("127.0.0.1", 0, guarded, threaded=True)
port_file.write_text(str(server.server_port))
server.serve_forever()
