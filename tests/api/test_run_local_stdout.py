"""`trainer.run_local` (a notebook's in-process run): stdout without the protocol lines, progress
events to the caller's callback, and a callback that prints a line updated in place (no newline)
does not glue itself to the next protocol line."""
import io
import sys
from pathlib import Path

import pytest

from trainer.api.jobs import _ProtocolFilter
from trainer.protocol import TIMING_PREFIX, progress_line

REPO = Path(__file__).resolve().parents[2]


def test_protocol_lines_become_events_and_user_lines_pass(monkeypatch):
    out = io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    events = []

    def show(event):
        events.append(event["step"])
        print(f"\rstep {event['step']}", end="")      # a notebook's one updating line

    with _ProtocolFilter(show):
        print("loading data")
        print(progress_line(0, {"loss": 1.0}, 1.0))
        print(progress_line(1, {"loss": 0.5}, 2.0))
        print(TIMING_PREFIX + "{}")
        print("done")
    assert events == [0, 1]
    assert out.getvalue() == "loading data\n\rstep 0\rstep 1done\n"
    assert "TRAINER_" not in out.getvalue()


def test_without_a_callback_progress_is_silent(monkeypatch):
    out = io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    with _ProtocolFilter(None):
        print(progress_line(0, {"loss": 1.0}, 1.0))
        print("mine")
    assert out.getvalue() == "mine\n"


@pytest.mark.integration
def test_another_runtimes_run_streams_through_the_same_filter(tmp_path, monkeypatch):
    """`run_local` re-executed under another runtime's interpreter (tensorflow's, from the main
    venv): the child's progress lines become the caller's events and its own lines go where the
    caller said (stderr under `run --local --output json`), not raw onto stdout. Run here with
    this interpreter standing in for the runtime's."""
    from trainer.api.jobs import _run_local_in
    from trainer.spec import load_spec

    monkeypatch.setenv("TRAINER_HOME", str(tmp_path / "home"))
    spec, workdir = load_spec(REPO / "examples/digits/torch.yaml",
                              ["config.epochs=2", "config.width=4", "workers=1", "convert=null", "register=null"])
    out, stdout, events = io.StringIO(), io.StringIO(), []
    monkeypatch.setattr(sys, "stdout", stdout)
    result = _run_local_in(Path(sys.executable), spec, workdir, _ProtocolFilter(events.append, out))
    assert result.metrics["test_accuracy"] > 0
    assert [e["step"] for e in events] == [0, 1]
    assert "TRAINER_" not in out.getvalue() + stdout.getvalue() and stdout.getvalue() == ""
