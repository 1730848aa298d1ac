"""The benchmarks' record writer: README sections replaced in place, others kept."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))   # benchmarks/ is not a package

from benchmarks import _record as R  # noqa: E402


def test_readme_section_is_replaced_not_appended(tmp_path, monkeypatch):
    readme = tmp_path / "README.md"
    readme.write_text("# Benchmarks\n\nintro\n\n<!-- bench:other -->\nkeep me\n<!-- /bench:other -->\n")
    monkeypatch.setattr(R, "README", readme)
    R.update_readme("runner", "### Runner (first)\n| a |\n", "results/runner.png")
    R.update_readme("runner", "### Runner (second)\n| b |\n", "results/runner.png")
    text = readme.read_text()
    assert text.count("<!-- bench:runner -->") == 1 and "second" in text and "first" not in text
    assert "keep me" in text and text.startswith("# Benchmarks\n\nintro")


def test_percentiles_and_tables():
    assert R.pct([5, 1, 3, 2, 4], 0.5) == 3 and R.pct([1, 2, 3, 4, 100], 0.95) == 100
    assert R.median([None, 2, 4]) == 3 and R.median([]) is None
    table = R.markdown_table(["a", "b"], [[1, "x"]])
    assert table.splitlines() == ["| a | b |", "|---|---|", "| 1 | x |"]
