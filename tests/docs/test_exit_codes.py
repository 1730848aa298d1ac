"""Issue 27: every exit code in one README table, generated from trainer/errors.py (each error
class's `exit_code` and the first line of its docstring) plus the CLI's own codes; this test
regenerates it and fails, printing the table to paste, when the README drifts."""
import inspect
import re
from pathlib import Path

import trainer.errors as errors
from trainer.promotion.retrain import EXIT_UNCHANGED

README = Path(__file__).resolve().parents[2] / "README.md"
BEGIN = "<!-- exit codes: generated from trainer/errors.py; tests/docs/test_exit_codes.py checks it -->"
END = "<!-- end of exit codes -->"

# Codes the CLI gives that no error class carries.
CLI_CODES = {
    0: "success; also a promotion of what is already there (`changed: false`, nothing written)",
    EXIT_UNCHANGED: "`retrain --if-data-changed`: the data is unchanged, nothing submitted",
    130: "interrupted (Ctrl-C)",
}


def table() -> str:
    classes = sorted((c for _, c in inspect.getmembers(errors, inspect.isclass)
                      if issubclass(c, errors.TrainerError) and c.__module__ == errors.__name__),
                     key=lambda c: (c.exit_code, c.__mro__.__len__(), c.__name__))
    rows: dict[int, list[tuple[str, str]]] = {}
    for cls in classes:
        rows.setdefault(cls.exit_code, []).append((cls.__name__, inspect.getdoc(cls).splitlines()[0]))
    for code, meaning in CLI_CODES.items():
        rows.setdefault(code, []).append(("", meaning))
    lines = [BEGIN, "| exit | error (`kind` in `-o json`) | meaning |", "|---|---|---|"]
    for code in sorted(rows):
        for name, meaning in rows[code]:
            lines.append(f"| {code} | {f'`{name}`' if name else '-'} | {meaning} |")
    return "\n".join(lines + [END])


def test_the_readme_exit_code_table_is_the_one_errors_py_gives():
    text = README.read_text()
    assert BEGIN in text and END in text, f"README.md lacks the exit code table; add:\n{table()}"
    found = text[text.index(BEGIN):text.index(END) + len(END)]
    assert found == table(), f"README.md's exit code table drifted from trainer/errors.py; replace it with:\n{table()}"


def test_every_error_class_and_code_is_in_it():
    found = README.read_text()
    for name, cls in inspect.getmembers(errors, inspect.isclass):
        if issubclass(cls, errors.TrainerError):
            assert re.search(rf"\| {cls.exit_code} \| `{name}` \|", found), name
