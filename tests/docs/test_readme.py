"""The README's promises that code can check."""
import importlib.util
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_conversion_matrix_in_readme_is_generated_from_the_registry():
    spec = importlib.util.spec_from_file_location("readme_matrix", REPO / "scripts" / "readme_matrix.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    text = (REPO / "README.md").read_text()
    assert module.render(text) == text, "README matrix is stale: run scripts/readme_matrix.py"


def test_readme_commands_exist():
    text = (REPO / "README.md").read_text()
    assert "bash scripts/setup.sh && .venv/bin/trainer submit examples/digits/torch.yaml --wait" in text
    assert "bash scripts/test.sh" in text
    ci = (REPO / ".ci" / "run").read_text()
    assert "bash scripts/setup.sh" in ci and "bash scripts/test.sh" in ci
    # CI adds nothing the README's commands do not do: the Debian packages come from test.sh.
    assert "apt-get" not in ci
    assert "bash scripts/system-deps.sh" in (REPO / "scripts" / "test.sh").read_text()
    for path in re.findall(r"examples/\S+\.yaml", text):
        assert (REPO / path).is_file(), path
