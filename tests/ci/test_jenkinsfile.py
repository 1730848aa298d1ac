"""The Jenkinsfile: parsed by Groovy (Jenkins itself cannot run here), and its stages' commands
run in order, as a develop build then a main build, against the local cluster, MLflow store and
a real OCI registry; then retraining: unchanged data exits 10 and submits nothing, changed data
submits exactly one job."""
import gzip
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
JENKINSFILE = REPO / "Jenkinsfile"
TRAINER = str(Path(sys.executable).parent / "trainer")
JAVA_HOME = next((str(p) for p in sorted(Path("/usr/lib/jvm").glob("java-17-openjdk*"))), None) \
    if Path("/usr/lib/jvm").is_dir() else None


def _groovy_parse(text: str, tmp_path: Path) -> subprocess.CompletedProcess:
    if shutil.which("groovy") is None:
        pytest.skip("groovy is not installed (.ci/run installs it: apt-get install groovy)")
    env = {**os.environ, **({"JAVA_HOME": JAVA_HOME} if JAVA_HOME else {})}
    path = tmp_path / "Jenkinsfile"
    path.write_text(text)
    script = f"new GroovyShell().parse(new File('{path}').text); println 'parsed'"
    return subprocess.run(["groovy", "-e", script], capture_output=True, text=True, env=env, timeout=120)


def test_jenkinsfile_parses_and_a_broken_one_does_not(tmp_path):
    ok = _groovy_parse(JENKINSFILE.read_text(), tmp_path)
    assert ok.returncode == 0 and "parsed" in ok.stdout, ok.stderr
    broken = _groovy_parse(JENKINSFILE.read_text().replace("steps {", "steps {(", 1), tmp_path)
    assert broken.returncode != 0 and "parsed" not in broken.stdout


def stages(text: str) -> list[tuple[str, list[str], str | None]]:
    """(stage name, its `sh` commands, the branch its `when` needs) in file order."""
    found = []
    parts = re.split(r"\n\s*stage\('([^']+)'\)", text)
    for name, body in zip(parts[1::2], parts[2::2]):
        commands = re.findall(r"sh(?:\(script:)? '([^']+)'", body)
        branch = re.search(r"branch '([^']+)'", body)
        found.append((name, commands, branch.group(1) if branch else None))
    return found


def test_every_stage_is_one_trainer_command_or_an_approval():
    text = JENKINSFILE.read_text()
    names = [s[0] for s in stages(text)]
    assert names == ["Test", "Retrain if data changed", "Convert", "Promote to staging", "Approve production",
                     "Promote to production"]
    for name, commands, _ in stages(text):
        assert (commands and all(c.startswith("trainer ") for c in commands)) or "input message" in text
    assert "httpRequest(" in text and re.search(r"post \{[^}]*notify", text)


@pytest.fixture
def project(tmp_path):
    """A copy of the digits example as its own project (data as a local file it can change)."""
    root = tmp_path / "proj"
    (root / "examples/digits").mkdir(parents=True)
    (root / "pyproject.toml").write_text("")
    for name in ("train_torch.py", "digits_data.py"):
        shutil.copy(REPO / "examples/digits" / name, root / "examples/digits" / name)
    import sklearn.datasets

    shutil.copy(Path(sklearn.datasets.__file__).parent / "data/digits.csv.gz", root / "digits.csv.gz")
    (root / "spec.yaml").write_text(
        "name: digits-ci\nframework: torch\nentrypoint: examples/digits/train_torch.py:train\nworkers: 1\n"
        "resources: {accelerator: cpu, cpus_per_worker: 1}\ndata: {path: digits.csv.gz}\n"
        "config: {epochs: 1, lr: 0.05, batch_size: 64, width: 4, seed: 0}\ntracking: {experiment: digits-ci}\n"
        "convert: {targets: [onnx]}\n"
        "register: {model: digits-ci, gates: {staging: {parity: passed}, production: {accuracy: '>=0.05'}}}\n")
    return root


def _run(command: str, cwd: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", command.replace("trainer ", f"{TRAINER} ", 1)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def _build(branch: str, project: Path, env: dict) -> dict[str, int]:
    """One pipeline build on `branch`: the stages whose `when` allows it, their commands in order
    (the `input` approval is given); returns each command's exit code."""
    codes: dict[str, int] = {}
    retrained = None
    for name, commands, needs_branch in stages(JENKINSFILE.read_text()):
        if needs_branch and needs_branch != branch:
            continue
        if name in ("Convert", "Promote to staging") and retrained is False:
            continue
        for command in commands:
            done = _run(command, project, env)
            codes[name] = done.returncode
            if name == "Retrain if data changed":
                assert done.returncode in (0, 10), done.stderr[-2000:]
                retrained = done.returncode == 0
            else:
                assert done.returncode == 0, f"{name}: {done.stderr[-2000:]}"
    return codes


def _runs(env: dict) -> int:
    from trainer.tracking.runs import client

    mlc = client(f"sqlite:///{env['TRAINER_HOME']}/mlflow.db")
    exp = mlc.get_experiment_by_name("digits-ci")
    return len(mlc.search_runs([exp.experiment_id])) if exp else 0


@pytest.mark.integration
@pytest.mark.slow
def test_the_pipeline_chain_then_retrain_on_data_change(cluster, project, trainer_home, tmp_path):
    from trainer.registry import serve

    state, started = serve.start(port=0)
    try:
        env = {**os.environ, "SPEC": "spec.yaml", "MODEL": "digits-ci", "TRAINER_REGISTRY": state["address"],
               "TRAINER_PROMOTED_BY": "jenkins-test", "TRAINER_HOME": str(trainer_home),
               # the Jenkinsfile's MLflow server, here the session's store
               "MLFLOW_TRACKING_URI": f"sqlite:///{trainer_home}/mlflow.db"}
        env.pop("TRAINER_REGISTRY_USERNAME", None)
        env.pop("TRAINER_REGISTRY_PASSWORD", None)
        develop = _build("develop", project, env)
        assert develop["Retrain if data changed"] == 0 and "Promote to staging" in develop
        assert (project / "build/converted/report.json").is_file()
        main = _build("main", project, env)
        assert main["Retrain if data changed"] == 10 and "Convert" not in main
        assert main["Promote to production"] == 0
        history = _run('trainer promote history "$MODEL" -o json', project, env)
        assert [r["to"] for r in __import__("json").loads(history.stdout)] == ["staging", "production"]

        runs = _runs(env)
        same = _run('trainer retrain "$SPEC" --if-data-changed', project, env)
        assert same.returncode == 10 and _runs(env) == runs, same.stderr
        with gzip.open(project / "digits.csv.gz", "rt") as fh:
            rows = fh.read().splitlines()
        with gzip.open(project / "digits.csv.gz", "wt") as fh:
            fh.write("\n".join(rows[:-10]) + "\n")      # new data: ten rows fewer
        changed = _run('trainer retrain "$SPEC" --if-data-changed', project, env)
        assert changed.returncode == 0, changed.stderr[-2000:]
        assert _runs(env) == runs + 1
    finally:
        if started:
            serve.stop()
