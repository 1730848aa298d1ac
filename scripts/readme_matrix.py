"""Regenerate the conversion matrix in README.md from the converter registry:
`.venv/bin/python scripts/readme_matrix.py` (tests/docs/test_readme.py fails when it is stale)."""
import re
import sys
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCK = re.compile(r"(<!-- conversion-matrix:start[^\n]*-->\n)(.*?)(<!-- conversion-matrix:end -->)", re.S)


def render(text: str) -> str:
    from converters.registry import matrix_markdown

    return BLOCK.sub(lambda m: m.group(1) + matrix_markdown().rstrip() + "\n" + m.group(3), text)


if __name__ == "__main__":
    new = render(README.read_text())
    README.write_text(new)
    sys.exit(0)
