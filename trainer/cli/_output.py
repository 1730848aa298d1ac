"""The one output seam of every command: `--output table|json`, one printer, one error line.

- `OutputOpt` is the `--output/-o` option every command takes; `Printer(output)` checks it.
- `Printer.emit(data, render)`: with `json`, exactly one JSON document on stdout; with `table`,
  `render(data)` draws it for a person (or a key/value table when no renderer is given).
- `Printer.table(...)` draws a rich table that stays readable at any width and without a TTY:
  when its longest words cannot fit side by side (80 columns in a CI log), the rows are printed
  as `key: value` records instead, so no cell is ever cut to `onnx-i…`.
- `fail(err)`: a TrainerError becomes one red `error: ...` line and the exit code of its class
  (TRAINER_DEBUG=1 adds the traceback); under `--output json` stdout also gets one JSON document
  `{"error": ..., "exit_code": N, "kind": "GateError"}`, unless the command already printed its
  own (convert's failed-parity report: one document on stdout, always). `ErrorHandlingGroup` applies it to every
  command.
"""
from __future__ import annotations

import json
import os
from typing import Any, Callable, Iterable, Sequence

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text
from typer.core import TyperGroup

from trainer.cli._flags import FLAG_FOR
from trainer.errors import TrainerError, UsageError

try:  # typer vendors its own click (typer._click) since 0.2x; older ones use click itself
    from typer._click.exceptions import UsageError as ClickUsageError
except ImportError:  # pragma: no cover
    from click.exceptions import UsageError as ClickUsageError

OUTPUTS = ("table", "json")
OutputOpt = typer.Option("table", "--output", "-o", help="table | json")


def stdout() -> Console:
    return Console(highlight=False, soft_wrap=False)


def stderr() -> Console:
    return Console(stderr=True, highlight=False)


# An error line longer than this is cut (a message may quote user input: never a 1 MB line).
MAX_ERROR_CHARS = 1000


def error_line(e: BaseException) -> str:
    """The text after `error: `: one line (line breaks of any kind become spaces), at most
    MAX_ERROR_CHARS characters."""
    text = " ".join(part.strip() for part in str(e).splitlines() if part.strip()) or type(e).__name__
    # Below the CLI a message names the API's argument; here it is the flag that gave it.
    argument = (getattr(e, "fields", None) or {}).get("argument")
    if argument in FLAG_FOR and text.startswith(argument) and text[len(argument):][:1] in (" ", ":"):
        text = FLAG_FOR[argument] + text[len(argument):]
    if len(text) > MAX_ERROR_CHARS:
        text = f"{text[:MAX_ERROR_CHARS]}…({len(text):,} chars; TRAINER_DEBUG=1 shows all)"
    return text


# Whether this command already printed its one JSON document (a failure then prints no second one).
_emitted = [False]


def wants_json(args: Sequence[str]) -> bool:
    """Whether the command line asked for `--output json` (`-o json`, `--output=json`, `-ojson`),
    read from the words themselves: an error can come before any option was parsed."""
    args = list(args)
    for i, arg in enumerate(args):
        if arg == "--":
            break
        if arg in ("--output", "-o") and i + 1 < len(args) and args[i + 1] == "json":
            return True
        if arg in ("--output=json", "-ojson", "-o=json"):
            return True
    return False


def fail(e: TrainerError, as_json: bool = False) -> None:
    """One red line on stderr and the class's exit code; with `as_json` also one JSON document
    on stdout, `{"error", "exit_code", "kind"}` (a CI step parses stdout, a person reads stderr)."""
    if as_json and not _emitted[0]:     # a command that printed its document (convert's report) keeps it
        print(json.dumps({"error": error_line(e), "exit_code": e.exit_code, "kind": type(e).__name__}, indent=2))
    console = stderr()
    if os.environ.get("TRAINER_DEBUG"):
        console.print_exception()
    # Text, not markup: a message quoting user input ("name: '[/]'") must print as it is.
    # One line; a terminal shows it wrapped between words, not cut mid-word by the terminal.
    console.print(Text.assemble(("error:", "bold red"), " ", error_line(e)), soft_wrap=not console.is_terminal)
    from trainer.logs import show_path_hint

    hint = show_path_hint()     # Ray's / MLflow's own lines of this command, when there were any
    if hint:
        console.print(Text(hint, style="dim"), soft_wrap=not console.is_terminal)
    raise typer.Exit(e.exit_code)


class ErrorHandlingGroup(TyperGroup):
    """Every command's TrainerError (raised by the command, or by an option's check while
    parsing) becomes `fail(err)`; so does click's own usage error (a missing argument, `--atol abc`,
    an unknown option or command): one line, exit 2, with where to find the usage. Ctrl-C exits
    130 with one word."""

    def make_context(self, info_name, args, parent=None, **extra):
        self._json = wants_json(args)
        _emitted[0] = False
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except ClickUsageError as e:
            fail(_usage_error(e), self._json)

    def invoke(self, ctx):
        as_json = getattr(self, "_json", False)
        try:
            return super().invoke(ctx)
        except TrainerError as e:
            fail(e, as_json)
        except ClickUsageError as e:
            fail(_usage_error(e), as_json)
        except KeyboardInterrupt:
            stderr().print("interrupted")
            raise typer.Exit(130)


def _usage_error(e: ClickUsageError) -> UsageError:
    where = e.ctx.command_path if e.ctx is not None else ""
    return UsageError(e.format_message().rstrip() + (f" (see: {where} --help)" if where else ""))


class Printer:
    def __init__(self, output: str):
        if output not in OUTPUTS:
            raise UsageError(f"--output must be table or json, got {output!r}")
        self.json = output == "json"
        self.out = stdout()

    # -------------------------------------------------------------- results
    def emit(self, data: Any, render: Callable[[Any], None] | None = None, *, title: str = "") -> None:
        """The command's result: one JSON document, or drawn for a person."""
        if self.json:
            print(json.dumps(data, indent=2, default=str))
            _emitted[0] = True
        elif render is not None:
            render(data)
        elif isinstance(data, dict):
            self.kv(title, data)
        else:
            self.line(str(data))

    def document(self, text: str) -> None:
        """A result already serialized as one JSON document (json mode only)."""
        if self.json:
            print(text)
            _emitted[0] = True

    def line(self, text: str, style: str | None = None, *, whole: bool = False, wrap: bool = False) -> None:
        """A plain line for a person (never in json mode: a JSON document is the whole stdout).
        On a terminal it wraps between words, so an id is never split the way a terminal splits a
        long line; into a pipe or a file it stays one line (a log viewer wraps it), and so does a
        `whole` one anywhere (a path or URL to copy). `wrap`: prose, wrapped at the width (80
        without a terminal) everywhere."""
        if not self.json:
            self.out.print(Text(text, style=style or ""), soft_wrap=whole or not (wrap or self.out.is_terminal))

    def kv(self, title: str, rows: dict) -> None:
        self.table(["", ""], [[k, "" if v is None else v] for k, v in rows.items()], title=title, header=False)

    def fits(self, columns: Sequence[str], rows: Iterable[Sequence[Any]], header: bool = True) -> bool:
        """Whether `table` would draw these as a table (every word whole) rather than records."""
        rows = [["" if c is None else str(c) for c in row] for row in rows]
        return _min_width(list(columns) if header else [], rows, len(columns)) <= self.out.width

    def table(self, columns: Sequence[str], rows: Iterable[Sequence[Any]], *, title: str = "",
              header: bool = True) -> None:
        rows = [["" if c is None else str(c) for c in row] for row in rows]
        columns = list(columns)
        width = self.out.width
        if _min_width(columns if header else [], rows, len(columns)) > width:
            self._records(columns, rows, title)
            return
        table = Table(title=title or None, title_justify="left", show_header=header)
        widths = _fit_widths(columns if header else [], rows, len(columns), width - 3 * len(columns) - 1)
        for i, name in enumerate(columns):
            # Our widths, not rich's: narrowing a table to fit, rich may cut a column below its
            # longest word and fold it (`tflite@cortex-a7` / `2`); these never go below it.
            table.add_column(name, overflow="fold", style="bold" if (not header and i == 0) else None,
                             width=widths[i])
        for row in rows:
            table.add_row(*(Text(c) for c in row))
        self.out.print(table)

    def _records(self, columns: list[str], rows: list[list[str]], title: str) -> None:
        """The narrow form: one `key: value` block per row, nothing cut."""
        if title:
            self.out.print(Text(title, style="bold"))
        import textwrap

        key_width = max((len(c) for c in columns), default=0)
        indent = key_width + 2 if key_width else 0
        room = max(self.out.width - indent, 20)
        for n, row in enumerate(rows):
            if n:
                self.out.print("")
            for name, cell in zip(columns, row):
                # Wrapped between words under its key; a word longer than the room stays whole.
                parts = textwrap.wrap(cell, room, break_long_words=False, break_on_hyphens=False) or [""]
                lines = [f"{name:<{key_width}}  {parts[0]}" if name else parts[0]]
                lines += [" " * indent + part for part in parts[1:]]
                for line in lines:
                    self.out.print(Text(line), soft_wrap=True)

    # -------------------------------------------------------------- chatter
    def note(self, text: str) -> None:
        """Progress and hints for a person, on stderr (stdout stays the result)."""
        if not self.json:
            err = stderr()
            err.print(Text(text, style="dim"), soft_wrap=not err.is_terminal)


def _longest_words(header: list[str], rows: list[list[str]], ncols: int) -> list[int]:
    longest = [0] * ncols
    for row in ([header] if header else []) + rows:
        for i, cell in enumerate(row[:ncols]):
            longest[i] = max(longest[i], max((len(w) for w in str(cell).split()), default=0))
    return longest


def _fit_widths(header: list[str], rows: list[list[str]], ncols: int, room: int) -> list[int]:
    """Column widths that fit `room`: each column's longest cell, narrowed one at a time from the
    widest that can still give (never below its longest word)."""
    floor = _longest_words(header, rows, ncols)
    widths = [0] * ncols
    for row in ([header] if header else []) + rows:
        for i, cell in enumerate(row[:ncols]):
            widths[i] = max(widths[i], len(str(cell)), 1)
    widths = [max(w, f) for w, f in zip(widths, floor)]
    while sum(widths) > room:
        slack = [i for i in range(ncols) if widths[i] > floor[i]]
        if not slack:
            break
        widest = max(slack, key=lambda i: widths[i])
        widths[widest] -= 1
    return widths


def _min_width(header: list[str], rows: list[list[str]], ncols: int) -> int:
    """Columns needed to show every cell with no word broken: each column as wide as its
    longest word, plus rich's borders and padding (3 per column + 1)."""
    return sum(_longest_words(header, rows, ncols)) + 3 * ncols + 1
