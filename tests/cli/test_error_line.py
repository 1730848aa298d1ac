"""`fail()`: whatever a TrainerError carries, the user sees one `error:` line of bounded length,
printed as text (never as rich markup), and the class's exit code."""
import pytest
import typer

from trainer.cli._output import MAX_ERROR_CHARS, error_line, fail
from trainer.errors import SpecError, UsageError


@pytest.mark.parametrize("message", [
    "name: '[/]' does not match",            # rich markup closing tag
    "[bold red]not bold[/bold red]",
    "two\nlines\r\nand a\u2028separator",    # every kind of line break
    "x" * 1_000_000,                          # a 1 MB value
])
def test_any_message_is_one_bounded_line(capsys, message):
    with pytest.raises(typer.Exit) as e:
        fail(UsageError(message))
    assert e.value.exit_code == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert len(lines[0]) < MAX_ERROR_CHARS + 100
    if "[" in message:
        assert message in lines[0]           # printed as it is, not interpreted


def test_a_cut_line_says_how_long_it_was():
    assert error_line(UsageError("y" * 5000)).endswith("…(5,000 chars; TRAINER_DEBUG=1 shows all)")


@pytest.mark.parametrize("message,path,shown", [
    ("name: \"x\" does not match", "name", "name: \"x\" does not match"),     # already named: once
    ("config.a.b: must be finite", "config", "config.a.b: must be finite"),  # a nested field of it
    ("must be >= 1, got 0", "workers", "workers: must be >= 1, got 0"),      # not named: prefixed
    ("runtime 'x' cannot run torch jobs", "runtime", "runtime: runtime 'x' cannot run torch jobs"),
])
def test_a_spec_error_names_its_field_once(message, path, shown):
    assert str(SpecError(message, path=path)) == shown
