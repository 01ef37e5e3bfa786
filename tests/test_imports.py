"""The import arrows of the code (DESIGN, Layout): every module of ``cvpdl`` (the library), ``paper_figures`` (draws
only) and ``benchmark`` (the harness) sits on a declared layer and imports only from its own layer or a lower one,
and no modules import each other in a circle. Every import counts: inside functions, under ``TYPE_CHECKING``, and
``__import__`` / ``importlib.import_module`` calls with a literal name."""
import ast
import fnmatch
import textwrap
from pathlib import Path

import networkx as nx

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("cvpdl", "paper_figures", "benchmark")

# Lowest first. A module may import modules of its own layer or of a layer before it, never one after it. Every
# harness module is named (a new one must be placed here); cvpdl's subpackages and the suites are patterns.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("library core", ("cvpdl", "cvpdl.errors", "cvpdl.progress", "cvpdl.checkpoint", "cvpdl.ddp", "cvpdl.losses",
                      "cvpdl.engine", "cvpdl.population")),
    ("library data and evaluation", ("cvpdl.data", "cvpdl.data.*", "cvpdl.evaluation", "cvpdl.evaluation.*")),
    ("library methods", ("cvpdl.detection", "cvpdl.detection.*", "cvpdl.distill", "cvpdl.distill.*", "cvpdl.ovd",
                         "cvpdl.ovd.*", "cvpdl.analysis", "cvpdl.analysis.*")),
    ("figures", ("paper_figures", "paper_figures.*")),
    # facts every part of the harness uses: paths and digests, ranks, result files, the registry, configs, the
    # machine and git state a run records, tuned values, what a suite's hooks exchange with the runner
    ("harness base", ("benchmark", "benchmark.paths", "benchmark.distributed", "benchmark.results",
                      "benchmark.registry", "benchmark.config", "benchmark.reproducibility", "benchmark.params",
                      "benchmark.context", "benchmark.sizing")),
    ("claims and cache", ("benchmark.metric_summaries", "benchmark.power", "benchmark.claims", "benchmark.findings",
                          "benchmark.cache", "benchmark.robustness")),
    ("the runner's parts", ("benchmark.confirmation", "benchmark.plan", "benchmark.cells", "benchmark.tracking",
                            "benchmark.summary", "benchmark.report", "benchmark.suites", "benchmark.suites.*")),
    ("runner", ("benchmark.invocation", "benchmark.executors", "benchmark.runner")),
    # the performance package, one-way inside: its parts, then the command that assembles them
    ("perf base", ("benchmark.perf", "benchmark.perf.common")),
    ("perf models", ("benchmark.perf.models",)),
    ("perf measurements", ("benchmark.perf.suites", "benchmark.perf.curves", "benchmark.perf.profile")),
    ("perf extras", ("benchmark.perf.extras", "benchmark.perf.extras.*")),
    ("commands", ("benchmark.sensitivity", "benchmark.tune", "benchmark.verify", "benchmark.perf.command")),
    ("command line", ("benchmark.catalog", "benchmark.parser", "benchmark.cli", "benchmark.__main__")),
]


def modules(root: Path, packages=PACKAGES) -> dict[str, Path]:
    """Dotted module name → file, for every ``*.py`` of ``packages`` under ``root`` (a package is its ``__init__``)."""
    found = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _known(name: str, known) -> str | None:
    """``name`` or its longest prefix that is one of the ``known`` modules (``a.b.C`` names a class of ``a.b``)."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in known:
            return ".".join(parts[:end])
    return None


def imported_names(path: Path, module: str) -> set[str]:
    """Every absolute name the module imports, anywhere in it (relative imports resolved against ``module``):
    ``from a import b`` gives ``a.b`` (a submodule or a name of ``a``)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            names |= {f"{base}.{alias.name}" for alias in node.names}
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)
              and ((isinstance(node.func, ast.Name) and node.func.id == "__import__")
                   or (isinstance(node.func, ast.Attribute) and node.func.attr == "import_module"))):
            names.add(node.args[0].value)
    return names


def import_graph(root: Path = REPO, packages=PACKAGES) -> nx.DiGraph:
    """Module → module it imports, over the modules of ``packages`` (imports of anything else are left out)."""
    found = modules(root, packages)
    graph = nx.DiGraph()
    graph.add_nodes_from(found)
    for module, path in found.items():
        for name in imported_names(path, module):
            target = _known(name, found)
            if target is not None and target != module:
                graph.add_edge(module, target)
    return graph


def layer_of(module: str, layers=LAYERS) -> int | None:
    hits = [i for i, (_, patterns) in enumerate(layers) if any(fnmatch.fnmatchcase(module, p) for p in patterns)]
    assert len(hits) <= 1, f"{module} matches more than one layer: {[layers[i][0] for i in hits]}"
    return hits[0] if hits else None


def cycles(graph: nx.DiGraph) -> list[list[str]]:
    """The sets of modules that import each other in a circle (strongly connected, more than one module)."""
    return sorted(sorted(c) for c in nx.strongly_connected_components(graph) if len(c) > 1)


def backward_imports(graph: nx.DiGraph, layers=LAYERS) -> list[str]:
    """One line per import of a module on a higher layer than the importer's."""
    wrong = []
    for importer, imported in sorted(graph.edges):
        low, high = layer_of(importer, layers), layer_of(imported, layers)
        if low is not None and high is not None and high > low:
            wrong.append(f"{importer} ({layers[low][0]}) imports {imported} ({layers[high][0]}), a layer above it")
    return wrong


def undeclared(graph: nx.DiGraph, layers=LAYERS) -> list[str]:
    return sorted(m for m in graph.nodes if layer_of(m, layers) is None)


def test_every_module_has_a_layer():
    missing = undeclared(import_graph())
    assert not missing, (f"modules without a layer: {', '.join(missing)}; place each in LAYERS of "
                         "tests/test_imports.py (what it imports decides how low it can sit)")


def test_no_import_cycle():
    found = cycles(import_graph())
    assert not found, ("modules that import each other in a circle (function-level imports count): "
                       + "; ".join(" ↔ ".join(c) for c in found)
                       + ". Untie by moving what both need into a module below them.")


def test_no_import_runs_up_the_layers():
    wrong = backward_imports(import_graph())
    assert not wrong, ("imports against the layer order of tests/test_imports.py (a module may import its own "
                       "layer or lower ones):\n" + "\n".join(wrong))


def _package(root: Path, files: dict[str, str]) -> Path:
    for name, source in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source))
    return root


def test_the_checks_catch_a_cycle_and_a_backward_import(tmp_path):
    """A synthetic package: ``a`` and ``b`` import each other (one of them inside a function, relatively), and
    ``low`` imports ``high`` from the layer above it; ``high`` importing ``low`` is the allowed direction."""
    root = _package(tmp_path, {
        "toy/__init__.py": "",
        "toy/a.py": "from toy.b import helper\n",
        "toy/b.py": "def helper():\n    from . import a\n    return a\n",
        "toy/low.py": "import toy.high\n",
        "toy/high.py": "from toy.low import something\n",
        "toy/clean.py": "import os\nfrom toy import low\n",
    })
    layers = [("low", ("toy", "toy.a", "toy.b", "toy.low")), ("high", ("toy.high", "toy.clean"))]
    graph = import_graph(root, ("toy",))
    assert set(graph.edges) == {("toy.a", "toy.b"), ("toy.b", "toy.a"), ("toy.low", "toy.high"),
                                ("toy.high", "toy.low"), ("toy.clean", "toy.low")}
    assert cycles(graph) == [["toy.a", "toy.b"], ["toy.high", "toy.low"]]
    assert backward_imports(graph, layers) == ["toy.low (low) imports toy.high (high), a layer above it"]
    assert undeclared(graph, layers) == []
    assert undeclared(graph, layers[:1]) == ["toy.clean", "toy.high"]


def test_the_check_sees_every_kind_of_import(tmp_path):
    root = _package(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/sub/__init__.py": "from .leaf import VALUE\n",
        "pkg/sub/leaf.py": "VALUE = 1\n",
        "pkg/other.py": "",
        "pkg/late.py": "",
        "pkg/typed.py": "",
        "pkg/m.py": """
            import importlib
            from typing import TYPE_CHECKING
            if TYPE_CHECKING:
                from pkg.typed import Thing
            def f():
                from pkg.sub.leaf import VALUE
                import pkg.other
                return __import__('pkg.late'), importlib.import_module('pkg.sub')
            """,
    })
    graph = import_graph(root, ("pkg",))
    assert set(graph.successors("pkg.m")) == {"pkg.typed", "pkg.sub.leaf", "pkg.other", "pkg.late", "pkg.sub"}
    assert set(graph.successors("pkg.sub")) == {"pkg.sub.leaf"}  # a relative import inside a package
