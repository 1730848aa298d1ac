"""The bad-input corpus: specs, --set values, CLI arguments, model files and data paths a new user
(or a hostile file) can hand the CLI. Every one must end with exactly one `error:` line naming what
is wrong, its class's exit code, quickly, in bounded memory, and with nothing created: no cluster
(so no Ray job), no MLflow store or run, no checkpoint, no conversion output.

Most cases run in-process through typer's CliRunner (the import cost is paid once); the ones that
used to hang (FIFOs, /dev/zero) or could exhaust memory run the real CLI in a subprocess with a
timeout and an address-space limit, and are measured with the child's own rusage (os.wait4).
Edge bundles and pickled models are covered by their own security tests."""
from __future__ import annotations

import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from trainer.cli import app

REPO = Path(__file__).resolve().parents[2]
BASE = "name: digits\nframework: torch\nentrypoint: train.py:train\n"
TRAIN = """\
def train(ctx):
    pass

def noarg():
    pass

def two(a, b):
    pass

async def coro(ctx):
    pass

def kwonly(ctx, *, k):
    pass

def defaults(ctx, lr=0.1, *, seed=0):
    pass
"""
MAX_CPU_S = 2.0                       # in-process: CPU seconds per case (wall time swings with load)
MAX_RSS_GROWTH = 256 * 2**20          # in-process: growth of this process's peak RSS per case
CHILD_AS_LIMIT = 3 * 2**30            # subprocess: address-space limit (RLIMIT_AS)
CHILD_MAX_RSS = 1 * 2**30             # subprocess: its own peak RSS
CHILD_MAX_CPU_S = 4.0                 # subprocess: its own CPU time (interpreter + imports included)

# Special files a case can ask for (values of a case's `files`).
FIFO, SOCKET, FOLDER = object(), object(), object()


class Link:
    def __init__(self, target: str):
        self.target = target


def alias_bomb() -> str:
    lines = ["a: &a [x, x, x, x, x, x, x, x, x]"]
    for prev, cur in zip("abcdefgh", "bcdefghi"):
        lines.append(f"{cur}: &{cur} [" + ", ".join([f"*{prev}"] * 9) + "]")
    return BASE + "config:\n" + "\n".join("  " + line for line in lines) + "\n"


def spec(extra: str = "", base: str = BASE) -> dict:
    return {"job.yaml": base + extra}


# (id, files to create, argv, exit code, texts the one line must contain)
SPECS = [
    ("binary", {"job.yaml": bytes(range(256)) * 4}, ["submit", "job.yaml"], 2, ["job.yaml: is binary"]),
    ("latin-1", {"job.yaml": BASE.replace("digits", "d\xe9mo").encode("latin-1")}, ["submit", "job.yaml"], 2,
     ["job.yaml: is not UTF-8 text", "line 1"]),
    ("utf-16", {"job.yaml": BASE.encode("utf-16")}, ["submit", "job.yaml"], 2, ["job.yaml: is UTF-16"]),
    ("empty", {"job.yaml": b""}, ["submit", "job.yaml"], 2, ["job.yaml: the file is empty"]),
    ("comments only", {"job.yaml": "# a spec\n\n"}, ["submit", "job.yaml"], 2, ["job.yaml: the file is empty"]),
    ("a list", {"job.yaml": "- name: digits\n"}, ["submit", "job.yaml"], 2, ["a job spec is a mapping", "a list"]),
    ("10,000-deep list", spec("config: {x: " + "[" * 10_000 + "]" * 10_000 + "}\n"), ["submit", "job.yaml"], 2,
     ["job.yaml line 4", "nested more than 32 levels"]),
    ("10,000-deep mapping", spec("config: " + "{a: " * 10_000 + "1" + "}" * 10_000 + "\n"),
     ["spec", "validate", "job.yaml"], 2, ["nested more than 32 levels"]),
    ("alias bomb", {"job.yaml": alias_bomb()}, ["submit", "job.yaml"], 2, ["YAML aliases (*a) are not allowed"]),
    ("merge alias", {"job.yaml": "base: &b {workers: 2}\n<<: *b\n" + BASE}, ["submit", "job.yaml"], 2,
     ["job.yaml line 2", "YAML aliases (*b)"]),
    ("duplicate key", spec("workers: 1\nworkers: 2\n"), ["submit", "job.yaml"], 2,
     ['job.yaml line 5: duplicate key "workers" (first at line 4)']),
    ("duplicate nested key", spec("resources: {gpus_per_worker: 0, gpus_per_worker: 1}\n"), ["submit", "job.yaml"], 2,
     ['duplicate key "gpus_per_worker"']),
    ("over the size cap", spec("# " + "x" * 300_000 + "\n"), ["submit", "job.yaml"], 2,
     ["job.yaml: is 300,", "a job spec is at most 262,144"]),
    ("spec is a folder", {"job.yaml": FOLDER}, ["submit", "job.yaml"], 2, ["job.yaml: is a folder"]),
    ("spec is a socket", {"job.yaml": SOCKET}, ["submit", "job.yaml"], 2, ["job.yaml: is a socket"]),
    ("spec missing", {}, ["submit", "nope.yaml"], 2, ["spec file not found: nope.yaml"]),
    ("workers '2'", spec("workers: '2'\n"), ["submit", "job.yaml"], 2,
     ['workers: must be an integer, got the string "2"']),
    ("workers true", spec("workers: true\n"), ["submit", "job.yaml"], 2,
     ["workers: must be an integer, got the boolean true"]),
    ("workers 2.5", spec("workers: 2.5\n"), ["submit", "job.yaml"], 2, ["workers: must be an integer, got 2.5"]),
    ("workers 1e9", spec("workers: 1e9\n"), ["submit", "job.yaml"], 2,
     ['workers: must be an integer, got the string "1e9"']),
    ("workers 10^9", spec("workers: 1000000000\n"), ["submit", "job.yaml"], 2, ["workers: must be <= 10000"]),
    ("workers 5,000 digits", spec("workers: " + "9" * 5000 + "\n"), ["submit", "job.yaml"], 2,
     ["job.yaml: a value cannot be read: a number has more than 4,300 digits"]),
    ("cpus 1e-300", spec("resources: {cpus_per_worker: 1.0e-300}\n"), ["submit", "job.yaml"], 2,
     ["resources.cpus_per_worker: must be 0 or >= 0.0001 (Ray's smallest resource amount"]),
    ("cpus 1e-300 unquoted text", spec("resources: {cpus_per_worker: 1e-300}\n"), ["submit", "job.yaml"], 2,
     ["resources.cpus_per_worker: must be a number", "write 1.0e-300"]),
    ("cpus .inf", spec("resources: {cpus_per_worker: .inf}\n"), ["submit", "job.yaml"], 2,
     ["resources.cpus_per_worker: must be a finite number"]),
    ("gpus .inf", spec("resources: {gpus_per_worker: .inf}\n"), ["submit", "job.yaml"], 2,
     ["resources.gpus_per_worker: must be a finite number"]),
    ("gpus .nan", spec("resources: {gpus_per_worker: .nan}\n"), ["submit", "job.yaml"], 2,
     ["resources.gpus_per_worker: must be a finite number"]),
    ("gpus 1000", spec("resources: {gpus_per_worker: 1000}\n"), ["submit", "job.yaml"], 2,
     ["resources.gpus_per_worker: must be <= 64"]),
    ("atol .inf", spec("convert: {targets: [onnx], parity: {atol: .inf}}\n"), ["submit", "job.yaml"], 2,
     ["convert.parity.atol: must be a finite number"]),
    ("atol .nan", spec("convert: {targets: [onnx], parity: {atol: .nan}}\n"), ["submit", "job.yaml"], 2,
     ["convert.parity.atol: must be a finite number"]),
    ("atol 5", spec("convert: {targets: [onnx], parity: {atol: 5}}\n"), ["submit", "job.yaml"], 2,
     ["convert.parity.atol: must be <= 1"]),
    ("rtol -1", spec("convert: {targets: [onnx], parity: {rtol: -1}}\n"), ["submit", "job.yaml"], 2,
     ["convert.parity.rtol: must be > 0"]),
    ("min_agreement 1.5", spec("convert: {targets: [onnx], parity: {min_agreement: 1.5}}\n"), ["submit", "job.yaml"],
     2, ["convert.parity.min_agreement: must be <= 1"]),
    ("keep '3'", spec("checkpoint: {keep: '3'}\n"), ["submit", "job.yaml"], 2, ["checkpoint.keep: must be an integer"]),
    ("max_failures 10^6", spec("failure: {max_failures: 1000000}\n"), ["submit", "job.yaml"], 2,
     ["failure.max_failures: must be <= 1000"]),
    ("timeout 10^9 min", spec("timeout_minutes: 1000000000\n"), ["submit", "job.yaml"], 2,
     ["timeout_minutes: must be <= 525600"]),
    ("target bogus", spec("convert: {targets: [bogus]}\n"), ["submit", "job.yaml"], 2,
     ["convert.targets: unknown target 'bogus'; valid: onnx, onnx-int8"]),
    ("target without a route", spec("convert: {targets: [tflite-int8]}\n"), ["submit", "job.yaml"], 2,
     ["convert.targets: torch models (torch frontend) cannot be converted to tflite-int8"]),
    ("edge cpu bogus", spec("convert: {targets: [onnx], edge: [bogus]}\n"), ["spec", "validate", "job.yaml"], 2,
     ["convert.edge: unknown aarch64 CPU model 'bogus'; valid:", "cortex-a72"]),
    ("edge cpu max", spec("convert: {targets: [onnx], edge: [max]}\n"), ["submit", "job.yaml"], 2,
     ["convert.edge: aarch64 CPU 'max' gives wrong int8"]),
    ("edge without a bundle target", spec("convert: {targets: [pytorch], edge: [cortex-a72]}\n"),
     ["submit", "job.yaml"], 2, ["convert.edge: an edge bundle needs at least one of the onnx"]),
    ("entrypoint ../", spec(base=BASE.replace("train.py:train", "../train.py:train")), ["submit", "job.yaml"], 2,
     ["entrypoint: must be a file inside the project", "../train.py:train"]),
    ("entrypoint absolute", spec(base=BASE.replace("train.py:train", "/tmp/train.py:train")), ["submit", "job.yaml"],
     2, ["entrypoint: must be a file inside the project"]),
    ("entrypoint symlink out", {**spec(base=BASE.replace("train.py:train", "link.py:train")),
                                "link.py": Link("../outside/train.py")}, ["submit", "job.yaml"], 2,
     ["entrypoint: link.py resolves to", "outside the project folder"]),
    ("function without argument", spec(base=BASE.replace(":train", ":noarg")), ["submit", "job.yaml"], 2,
     ["entrypoint: train.py:noarg (line 4) takes no argument"]),
    ("function with two arguments", spec(base=BASE.replace(":train", ":two")), ["submit", "job.yaml"], 2,
     ["entrypoint: train.py:two (line 7) takes 2 required arguments (a, b)"]),
    ("async function", spec(base=BASE.replace(":train", ":coro")), ["submit", "job.yaml"], 2,
     ["entrypoint: train.py:coro", "async def"]),
    ("required keyword-only", spec(base=BASE.replace(":train", ":kwonly")), ["submit", "job.yaml"], 2,
     ["entrypoint: train.py:kwonly", "keyword-only parameter(s) k"]),
    ("entrypoint binary", {**spec(base=BASE.replace("train.py", "bin.py")), "bin.py": b"\x00\xff" * 64},
     ["submit", "job.yaml"], 2, ["entrypoint: bin.py: cannot be parsed as Python"]),
    ("entrypoint socket", {**spec(base=BASE.replace("train.py", "s.py")), "s.py": SOCKET},
     ["submit", "job.yaml"], 2, ["entrypoint: s.py is not a regular file (a socket)"]),
    ("entrypoint not UTF-8", {**spec(base=BASE.replace("train.py", "l1.py")), "l1.py": b"def train(ctx):\n    x = '\xe9'\n"},
     ["submit", "job.yaml"], 2, ["entrypoint: l1.py line 2: syntax error"]),
    ("entrypoint folder", {**spec(base=BASE.replace("train.py", "pkg.py")), "pkg.py": FOLDER},
     ["submit", "job.yaml"], 2, ["entrypoint: pkg.py is not a regular file (a folder)"]),
    ("experiment ../../x", spec("tracking: {experiment: ../../x}\n"), ["submit", "job.yaml"], 2,
     ["tracking.experiment: must be 1-128 letters", '"../../x"']),
    ("experiment a/b", spec("tracking: {experiment: a/b}\n"), ["submit", "job.yaml"], 2,
     ["tracking.experiment: must be", "$TRAINER_HOME/mlartifacts"]),
    ("markup name", spec(base=BASE.replace("name: digits", "name: '[/]'")), ["submit", "job.yaml"], 2,
     ['name: "[/]" does not match']),
    ("200k-char name", spec(base=BASE.replace("digits", "a" * 200_000)), ["submit", "job.yaml"], 2,
     ["name: \"" + "a" * 80 + "…(200,000 chars)"]),
    ("5,000 unknown keys", spec("".join(f"k{i}: 1\n" for i in range(5000))), ["submit", "job.yaml"], 2,
     ["k0: unknown key", "and 4997 more"]),
    ("config !!binary", spec("config: {d: !!binary aGVsbG8=}\n"), ["submit", "job.yaml"], 2,
     ["config.d: must be a string, number, boolean, null, list or mapping, got bytes"]),
    ("config .nan", spec("config: {lr: .nan}\n"), ["submit", "job.yaml"], 2, ["config.lr: must be a finite number"]),
    ("python tag", spec("config: {d: !!python/object/apply:os.system [echo hi]}\n"), ["submit", "job.yaml"], 2,
     ["not valid YAML (line 4", "could not determine a constructor"]),
    ("control character", spec("config: {d: \"a\x01\"}\n"), ["submit", "job.yaml"], 2,
     ["not valid YAML text: character U+0001"]),
    ("run --local too", spec("workers: '2'\n"), ["run", "job.yaml", "--local"], 2, ["workers: must be an integer"]),
]

DATA = [
    ("data socket", {**spec("data: {path: s.sock}\n"), "s.sock": SOCKET}, ["submit", "job.yaml"], 2,
     ["data.path:", "s.sock is a socket: data must be a regular file or a folder"]),
    ("data dangling link in a folder", {**spec("data: {path: d}\n"), "d/a.csv": "1\n", "d/gone": Link("nowhere")},
     ["submit", "job.yaml"], 2, ["data.path:", "gone is a symlink to nothing"]),
    ("data socket in a folder", {**spec("data: {path: d}\n"), "d/a.csv": "1\n", "d/s.sock": SOCKET},
     ["submit", "job.yaml"], 2, ["data.path:", "s.sock is a socket, in the data folder"]),
    ("data package ..", spec("data: {path: 'package://sklearn/../../etc/passwd'}\n"), ["submit", "job.yaml"], 2,
     ["data.path: package://sklearn/../../etc/passwd: the file must be inside the package"]),
    ("data missing", spec("data: {path: nope.csv}\n"), ["submit", "job.yaml"], 2, ["data.path: no such file or folder"]),
]

GOOD = spec()
SETS = [
    ("--set workers='2'", GOOD, ["submit", "job.yaml", "--set", "workers='2'"], 2,
     ['workers: must be an integer, got the string "2"']),
    ("--set workers=true", GOOD, ["submit", "job.yaml", "--set", "workers=true"], 2,
     ["workers: must be an integer, got the boolean true"]),
    ("--set gpus=.inf", GOOD, ["submit", "job.yaml", "--set", "resources.gpus_per_worker=.inf"], 2,
     ["resources.gpus_per_worker: must be a finite number"]),
    ("--set alias", GOOD, ["submit", "job.yaml", "--set", "config.x=[&a 1, *a]"], 2,
     ["--set config.x line 1: YAML aliases (*a) are not allowed"]),
    ("--set duplicate key", GOOD, ["submit", "job.yaml", "--set", "config.x={a: 1, a: 2}"], 2,
     ['--set config.x line 1: duplicate key "a"']),
    ("--set deep", GOOD, ["submit", "job.yaml", "--set", "config.x=" + "[" * 5000 + "]" * 5000], 2,
     ["--set config.x line 1: nested more than 32 levels"]),
    ("--set experiment", GOOD, ["submit", "job.yaml", "--set", "tracking.experiment=../x"], 2,
     ["tracking.experiment: must be 1-128 letters"]),
    ("--set 100k name", GOOD, ["submit", "job.yaml", "--set", "name=" + "B" * 100_000], 2,
     ["name: \"" + "B" * 80 + "…(100,000 chars)"]),
    ("--set empty name part", GOOD, ["submit", "job.yaml", "--set", "config..x=1"], 2,
     ["--set: 'config..x': expected a dotted key"]),
    ("--set 40 names", GOOD, ["submit", "job.yaml", "--set", "config." + ".".join(["a"] * 40) + "=1"], 2,
     ["expected a dotted key of at most 32 names"]),
    ("--set target", GOOD, ["submit", "job.yaml", "--set", "convert.targets=[bogus]"], 2,
     ["convert.targets: unknown target 'bogus'"]),
    ("--set huge int", GOOD, ["submit", "job.yaml", "--set", "workers=" + "9" * 5000], 2,
     ["--set workers: a value cannot be read: a number has more than 4,300 digits"]),
]

MODEL = {"m.onnx": b"not really onnx", "x.npy": "npy"}
ARGS = [
    ("--atol -1", MODEL, ["convert", "m.onnx", "--atol", "-1"], 2, ["--atol must be > 0 and <= 1", "got -1"]),
    ("--atol nan", MODEL, ["convert", "m.onnx", "--atol", "nan"], 2, ["--atol must be a finite number"]),
    ("--rtol inf", MODEL, ["convert", "m.onnx", "--rtol", "inf"], 2, ["--rtol must be a finite number"]),
    ("--atol abc", MODEL, ["convert", "m.onnx", "--atol", "abc"], 2, ["Invalid value for '--atol'"]),
    ("--min-agreement 1.5", MODEL, ["convert", "m.onnx", "--min-agreement", "1.5"], 2,
     ["--min-agreement must be >= 0 and <= 1"]),
    ("--max-accuracy-drop -0.1", MODEL, ["convert", "m.onnx", "--max-accuracy-drop", "-0.1"], 2,
     ["--max-accuracy-drop must be >= 0"]),
    ("--edge bogus", MODEL, ["convert", "m.onnx", "--from", "onnx", "--edge", "bogus"], 2,
     ["unknown aarch64 CPU model 'bogus'"]),
    ("--edge max", MODEL, ["convert", "m.onnx", "--from", "onnx", "--edge", "cortex-a72,max"], 2,
     ["aarch64 CPU 'max'"]),
    ("model missing", MODEL, ["convert", "nope.pt"], 2, ["model not found: nope.pt"]),
    ("no model", MODEL, ["convert"], 2, ["missing MODEL"]),
    ("model is a socket", {**MODEL, "m.sock": SOCKET}, ["convert", "m.sock", "--from", "onnx"], 2,
     ["model m.sock: is a socket, not a file or a folder"]),
    ("model without --from", {**MODEL, "m.bin": b"x"}, ["convert", "m.bin"], 2, ["--from is required for m.bin"]),
    ("--from bogus", MODEL, ["convert", "m.onnx", "--from", "bogus"], 2, ["unknown frontend (--from) 'bogus'"]),
    ("--to bogus", MODEL, ["convert", "m.onnx", "--from", "onnx", "--to", "onnx,bogus"], 2,
     ["unknown target (--to) 'bogus'"]),
    ("--calib folder", {**MODEL, "cal": FOLDER}, ["convert", "m.onnx", "--calib", "cal"], 2,
     ["--calib cal: is a folder, not a file"]),
    ("--calib missing", MODEL, ["convert", "m.onnx", "--calib", "nope.npy"], 2, ["--calib nope.npy: no such file"]),
    ("--calib .txt", {**MODEL, "c.txt": "1"}, ["convert", "m.onnx", "--calib", "c.txt"], 2,
     ["--calib c.txt: must be a .npy or .npz file"]),
    ("--out . with a report.json", {**MODEL, "report.json": "{}", "keep.py": "x = 1\n"},
     ["convert", "m.onnx", "--from", "onnx", "--out", "."], 2, ["--out", "project: exists and is a folder trainer convert did not write"]),
    ("--out a project folder", {**MODEL, "proj/report.json": '{"status": "PASSED"}', "proj/a.py": "x = 1\n"},
     ["convert", "m.onnx", "--from", "onnx", "--out", "proj"], 2, ["--out", "proj: exists"]),
    ("--out a file", {**MODEL, "out.txt": "mine"}, ["convert", "m.onnx", "--from", "onnx", "--out", "out.txt"], 2,
     ["--out", "out.txt: exists and is a file"]),
    ("--nope", MODEL, ["convert", "m.onnx", "--nope"], 2, ["No such option: --nope"]),
    ("edge run --inputs missing", {"b": FOLDER}, ["edge", "run", "b", "--inputs", "nope.npy"], 2,
     ["--inputs nope.npy: no such file"]),
    ("edge run --inputs folder", {"b": FOLDER}, ["edge", "run", "b", "--inputs", "b"], 2,
     ["--inputs b: is a folder, not a file"]),
    ("edge run --inputs text", {"b": FOLDER, "in.npy": "1,2,3\n"}, ["edge", "run", "b", "--inputs", "in.npy"], 2,
     ["--inputs in.npy: is not an .npy file"]),
    ("edge run --inputs pickled", {"b": FOLDER, "in.npy": "object-npy"}, ["edge", "run", "b", "--inputs", "in.npy"],
     2, ["--inputs in.npy: cannot read it as .npy (Object arrays cannot be loaded"]),
    ("edge run --cpu bogus", {"b": FOLDER, "in.npy": "npy"}, ["edge", "run", "b", "--inputs", "in.npy", "--cpu", "x"],
     2, ["unknown aarch64 CPU model 'x'"]),
    ("edge run --repeat -1", {"b": FOLDER, "in.npy": "npy"}, ["edge", "run", "b", "--inputs", "in.npy", "--repeat",
                                                              "-1"], 2, ["--repeat must be >= 0"]),
    ("edge run without --inputs", {"b": FOLDER}, ["edge", "run", "b"], 2, ["Missing option '--inputs'"]),
    ("cluster up --node A100:0", {}, ["cluster", "up", "--node", "A100:0"], 2, ["--node 'A100:0'"]),
    ("cluster up --node 'A 100:1'", {}, ["cluster", "up", "--node", "A 100:1"], 2, ["--node 'A 100:1'"]),
    ("cluster join --cpus 0", {}, ["cluster", "join", "--address", "h:6379", "--cpus", "0"], 2,
     ["--cpus must be >= 1"]),
    ("wait --timeout -5", {}, ["wait", "j", "--timeout", "-5"], 2, ["--timeout must be >= 0, got -5"]),
    ("wait --timeout nan", {}, ["wait", "j", "--timeout", "nan"], 2, ["--timeout must be a finite number"]),
    ("submit --output yaml", GOOD, ["submit", "job.yaml", "--output", "yaml"], 2, ["--output must be table or json"]),
    ("submit --k8s --address", GOOD, ["submit", "job.yaml", "--k8s", "--address", "http://x:8265"], 2,
     ["--k8s creates the job's own KubeRay cluster"]),
    ("submit without a spec", {}, ["submit"], 2, ["Missing argument 'spec'"]),
    ("run without --local", GOOD, ["run", "job.yaml"], 2, ["pass --local"]),
    ("unknown command", {}, ["sumbit", "job.yaml"], 2, ["No such command 'sumbit'"]),
    ("node labels --format", {}, ["node", "labels", "--format", "yaml"], 2, ["--format must be one of"]),
    ("model garbage onnx", {**MODEL, "g.onnx": b"\x08\x07garbage" * 10},
     ["convert", "g.onnx", "--from", "onnx", "--to", "onnx", "--calib", "x.npy"], 7,
     ["g.onnx", "truncated or corrupt"]),
]

CASES = SPECS + DATA + SETS + ARGS


def _make(root: Path, files: dict) -> None:
    import numpy as np

    (root / "pyproject.toml").write_text("[project]\nname = 'p'\n")
    (root / "train.py").write_text(TRAIN)
    (root.parent / "outside").mkdir(exist_ok=True)
    (root.parent / "outside" / "train.py").write_text(TRAIN)
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if content is FIFO:
            os.mkfifo(path)
        elif content is SOCKET:
            cwd = os.getcwd()
            os.chdir(path.parent)       # AF_UNIX paths are short: bind the bare name
            try:
                sock = socket.socket(socket.AF_UNIX)
                sock.bind(path.name)
                sock.close()
            finally:
                os.chdir(cwd)
        elif content is FOLDER:
            path.mkdir()
        elif isinstance(content, Link):
            path.symlink_to(content.target)
        elif content == "npy":
            np.save(path, np.zeros((4, 1, 8, 8), np.float32))
        elif content == "object-npy":
            np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
        elif isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def _assert_one_line(output: str, code: int, got: int, expected: list[str]) -> str:
    lines = [ln for ln in output.splitlines() if ln.strip()]
    assert got == code, (got, output[-2000:])
    assert len(lines) == 1, output[-2000:]         # one line: no traceback, no usage box
    line = lines[0]
    assert line.startswith("error: "), line
    assert len(line) <= 1100, len(line)            # never a 1 MB line
    for text in expected:
        assert text in line, (text, line)
    assert not any(f"{w}: {w}:" in line for w in ("name", "workers", "entrypoint", "--set", "data.path")), line
    return line


@pytest.mark.parametrize("case_id,files,argv,code,expected", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_creates_nothing(tmp_path, monkeypatch, case_id, files, argv, code, expected):
    project = tmp_path / "project"
    project.mkdir()
    home = tmp_path / "home"
    monkeypatch.setenv("TRAINER_HOME", str(home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("TRAINER_ADDRESS", raising=False)
    monkeypatch.chdir(project)
    _make(project, files)
    before = _tree(tmp_path)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    started = time.process_time()
    result = CliRunner().invoke(app, argv)
    cpu = time.process_time() - started

    _assert_one_line(result.output, code, result.exit_code, expected)
    assert cpu < MAX_CPU_S, f"{case_id} took {cpu:.2f} s of CPU"
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss_before
    assert grown < MAX_RSS_GROWTH, f"{case_id} grew peak RSS by {grown / 2**20:.0f} MiB"
    # Nothing created: no $TRAINER_HOME (cluster state, mlflow.db, checkpoints, mlartifacts), no
    # ./mlruns or ./converted, no staging folder; every input still there, unchanged in name.
    assert not home.exists(), sorted(_tree(home))
    assert _tree(tmp_path) == before


def test_the_corpus_is_big_enough():
    assert len(CASES) >= 60
    assert len({c[0] for c in CASES}) == len(CASES)


# ------------------------------------------------------------------ the real CLI, in a subprocess

def _limit_memory():
    resource.setrlimit(resource.RLIMIT_AS, (CHILD_AS_LIMIT, CHILD_AS_LIMIT))


def _run_cli(argv: list[str], cwd: Path, home: Path, timeout: float = 60) -> tuple[int, str, resource.struct_rusage, float]:
    """The CLI as a user runs it, under an address-space limit; returns (exit code, output, the
    child's own rusage, wall seconds). A hang is killed at `timeout` and fails the case."""
    env = {**os.environ, "TRAINER_HOME": str(home), "PYTHONPATH": str(REPO), "COLUMNS": "200"}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("TRAINER_ADDRESS", None)
    with tempfile.TemporaryFile() as out:
        started = time.monotonic()
        proc = subprocess.Popen([sys.executable, "-m", "trainer.cli", *argv], cwd=cwd, env=env, stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, preexec_fn=_limit_memory)
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() - started > timeout:
                proc.kill()
                os.wait4(proc.pid, 0)
                pytest.fail(f"{argv} still running after {timeout} s: it hangs")
            time.sleep(0.02)
        wall = time.monotonic() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        return proc.returncode, out.read().decode(errors="replace"), usage, wall


HANGS = [
    ("spec is a FIFO", {"job.yaml": FIFO}, ["submit", "job.yaml"], 2, ["job.yaml: is a FIFO, not a regular file"]),
    ("spec is /dev/zero", {}, ["spec", "validate", "/dev/zero"], 2, ["/dev/zero: is a character device"]),
    ("data /dev/zero", spec("data: {path: /dev/zero}\n"), ["submit", "job.yaml"], 2,
     ["data.path: /dev/zero is a character device"]),
    ("data FIFO", {**spec("data: {path: d.fifo}\n"), "d.fifo": FIFO}, ["spec", "validate", "job.yaml"], 2,
     ["data.path:", "d.fifo is a FIFO"]),
    ("data folder with a FIFO", {**spec("data: {path: d}\n"), "d/a.csv": "1\n", "d/b.fifo": FIFO},
     ["submit", "job.yaml"], 2, ["data.path:", "b.fifo is a FIFO, in the data folder"]),
    ("data link to /dev/zero", {**spec("data: {path: z}\n"), "z": Link("/dev/zero")}, ["submit", "job.yaml"], 2,
     ["data.path:", "/dev/zero is a character device"]),
    ("model FIFO", {"m.onnx": FIFO}, ["convert", "m.onnx", "--from", "onnx"], 2, ["model m.onnx: is a FIFO"]),
    ("model /dev/zero", {}, ["convert", "/dev/zero", "--from", "onnx"], 2, ["model /dev/zero: is a character device"]),
    ("--calib FIFO", {"m.onnx": b"x", "c.npy": FIFO}, ["convert", "m.onnx", "--calib", "c.npy"], 2,
     ["--calib c.npy: is a FIFO"]),
    ("alias bomb", {"job.yaml": alias_bomb()}, ["submit", "job.yaml"], 2, ["YAML aliases"]),
    ("10,000-deep list", spec("config: {x: " + "[" * 10_000 + "]" * 10_000 + "}\n"), ["submit", "job.yaml"], 2,
     ["nested more than 32 levels"]),
]


@pytest.mark.parametrize("case_id,files,argv,code,expected", HANGS, ids=[c[0] for c in HANGS])
def test_what_used_to_hang_or_blow_up_ends_at_once_in_the_real_cli(tmp_path, case_id, files, argv, code, expected):
    project = tmp_path / "project"
    project.mkdir()
    home = tmp_path / "home"
    _make(project, files)
    before = _tree(tmp_path)
    rc, output, usage, wall = _run_cli(argv, project, home)
    _assert_one_line(output, code, rc, expected)
    cpu = usage.ru_utime + usage.ru_stime
    # The child's own CPU time (interpreter start and imports included): a loaded machine stretches
    # wall time, not this. The wall bound only has to catch a hang.
    assert cpu < CHILD_MAX_CPU_S, f"{case_id}: {cpu:.2f} s CPU"
    assert wall < 30, f"{case_id}: {wall:.1f} s wall"
    assert usage.ru_maxrss * 1024 < CHILD_MAX_RSS, f"{case_id}: peak RSS {usage.ru_maxrss / 1024:.0f} MiB"
    assert not home.exists()
    assert _tree(tmp_path) == before
