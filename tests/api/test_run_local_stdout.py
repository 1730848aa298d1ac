"""`trainer.run_local` (a notebook's in-process run): stdout without the protocol lines, progress
events to the caller's callback, and a callback that prints a line updated in place (no newline)
does not glue itself to the next protocol line."""
import io
import sys

from trainer.api.jobs import _ProtocolFilter
from trainer.protocol import TIMING_PREFIX, progress_line


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
