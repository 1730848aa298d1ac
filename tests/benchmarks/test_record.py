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


def test_soak_and_scale_record_through_record_py():
    """One machine(), one percentile, one writer: soak and scale define none of their own; no
    benchmark edits sys.path (each runs as `python -m benchmarks.<name>`); soak's and scale's job
    functions live in benchmarks/jobs."""
    import ast
    import subprocess

    root = Path(__file__).resolve().parents[2]
    for name in ("soak", "scale"):
        source = (root / "benchmarks" / f"{name}.py").read_text()
        defined = {n.name for n in ast.parse(source).body if isinstance(n, ast.FunctionDef)}
        assert not defined & {"machine", "percentile", "pct"}, name
        assert "sys.path" not in source and "benchmarks/jobs/fleet.py:" in source, name
    for name in ("runner", "submit", "tracking"):
        assert "sys.path" not in (root / "benchmarks" / f"{name}.py").read_text(), name
    proc = subprocess.run([sys.executable, "-c", "import benchmarks.soak, benchmarks.scale, benchmarks.jobs.fleet, "
                           "benchmarks.runner, benchmarks.submit, benchmarks.tracking"],
                          cwd=root, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    m = R.machine()
    assert {"cpu", "cores", "memory_gib", "os", "ray", "mlflow", "date", "load_avg_start"} <= set(m)


def test_write_files_writes_the_three(tmp_path):
    def draw(path):
        path.write_bytes(b"png")

    paths = R.write_files("x", tmp_path, {"a": 1}, "# x\n", draw)
    assert [p.name for p in paths] == ["x.json", "x.md", "x.png"] and all(p.stat().st_size for p in paths)


def test_a_record_from_a_busy_machine_never_replaces_the_readmes(tmp_path, monkeypatch):
    readme = tmp_path / "README.md"
    readme.write_text("# Benchmarks\n\n<!-- bench:runner -->\nthe quiet record\n<!-- /bench:runner -->\n")
    monkeypatch.setattr(R, "README", readme)
    busy = {"started": 0.0, "load_before": [7.5, 6.0, 5.0], "load_after": [8.0, 6.0, 5.0], "machine": R.machine()}
    R.write("runner", "Runner", busy, "| a |", lambda ax: ax.plot([0, 1]), tmp_path / "out", False, readme=True)
    assert "the quiet record" in readme.read_text()
    assert "NOISY: 1-minute load 7.5" in (tmp_path / "out" / "runner.md").read_text()
    quiet = {**busy, "load_before": [0.4, 1.0, 1.0]}
    R.write("runner", "Runner", quiet, "| b |", lambda ax: ax.plot([0, 1]), tmp_path / "out", False, readme=True)
    assert "the quiet record" not in readme.read_text() and "| b |" in readme.read_text()
