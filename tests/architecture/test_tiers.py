"""The test tiers (tests/conftest.py): an `extended` test runs only when a -m expression names
the tier, so the default run (CI's) and `-m integration` leave it out; `-m extended` runs it."""
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

CONFTEST = Path(__file__).resolve().parent.parent / "conftest.py"
MARKERS = """
[pytest]
markers =
    integration: x
    framework: x
    slow: x
    tensorflow: x
    mxnet: x
    edge: x
    extended: x
addopts = --strict-markers
"""


@pytest.mark.parametrize("args, ran", [
    ([], {"test_quick", "test_slow"}),
    (["-m", "integration"], {"test_slow"}),
    (["-m", "not integration"], {"test_quick"}),
    (["-m", "extended"], {"test_extended"}),
    (["-m", "extended or not extended"], {"test_quick", "test_slow", "test_extended"}),
])
def test_the_extended_tier_runs_only_when_named(pytester, args, ran):
    pytester.makeconftest(CONFTEST.read_text())
    pytester.makeini(MARKERS)
    pytester.makepyfile(test_tiers_probe="""
        import pytest

        def test_quick():
            pass

        @pytest.mark.slow
        def test_slow():
            pass

        @pytest.mark.extended
        def test_extended():
            pass
    """)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-v", *args)
    passed = {line.split("::")[1].split()[0] for line in result.outlines if "::" in line and "PASSED" in line}
    assert passed == ran, result.outlines
