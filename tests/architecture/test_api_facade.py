"""`trainer/api/__init__.py` is the API's face: it re-exports, it defines nothing. Logic added
there would grow the grab bag the package replaced; it goes in the subsystem's module."""
import ast
from pathlib import Path

import pytest

INIT = Path(__file__).resolve().parents[2] / "trainer" / "api" / "__init__.py"


def definitions(source: str) -> list[str]:
    """Every top-level statement of a module that is not its docstring, an import or `__all__`."""
    found = []
    for i, node in enumerate(ast.parse(source).body):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            continue
        if i == 0 and isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            continue        # the docstring
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if [getattr(t, "id", None) for t in targets] == ["__all__"]:
                continue
        found.append(f"line {node.lineno}: {ast.unparse(node).splitlines()[0]}")
    return found


def test_api_init_only_reexports():
    assert definitions(INIT.read_text()) == []


def test_api_all_names_what_it_imports():
    import trainer.api as api

    assert sorted(api.__all__) == sorted(set(api.__all__)), "a name listed twice in __all__"
    assert [n for n in api.__all__ if not hasattr(api, n)] == []


@pytest.mark.parametrize("added", [
    "def helper():\n    return 1\n",
    "class Thing:\n    pass\n",
    "TIMEOUT_S = 5\n",
    "x: int = 1\n",
    "if True:\n    y = 2\n",
])
def test_a_definition_added_to_the_face_is_caught(added):
    assert definitions(INIT.read_text() + added) != []
