"""The layers' import arrows (DESIGN, Layout): ``cvpdl`` is the library and imports neither the harness nor the
figures; ``paper_figures`` draws from frames its caller loads and imports nothing of the harness."""
import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
FORBIDDEN = {"cvpdl": {"benchmark", "paper_figures"}, "paper_figures": {"benchmark"}}


def imported_packages(path: Path) -> set[str]:
    """Top-level packages ``path`` imports: import statements anywhere (functions included) and
    ``__import__`` / ``importlib.import_module`` calls with a literal name."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module)
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)
              and ((isinstance(node.func, ast.Name) and node.func.id == "__import__")
                   or (isinstance(node.func, ast.Attribute) and node.func.attr == "import_module"))):
            names.add(node.args[0].value)
    return {name.split(".")[0] for name in names}


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layer_imports_nothing_above_it(layer):
    files = sorted((REPO / layer).rglob("*.py"))
    assert files
    wrong = {str(path.relative_to(REPO)): sorted(imported_packages(path) & FORBIDDEN[layer]) for path in files}
    assert not {path: names for path, names in wrong.items() if names}


def test_the_check_sees_imports_inside_functions(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from benchmark.results import read_metrics\n    import paper_figures.style\n"
                      "    return __import__('benchmark.cells')\n")
    assert imported_packages(source) == {"benchmark", "paper_figures"}
