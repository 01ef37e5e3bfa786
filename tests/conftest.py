import os
import runpy
from pathlib import Path
from typing import NamedTuple

import pytest

NO_NETWORK = Path(__file__).resolve().parent / "no_network"


@pytest.fixture(scope="session", autouse=True)
def no_network():
    """Outbound connections fail in this process and in every process it starts (via ``sitecustomize``)."""
    runpy.run_path(str(NO_NETWORK / "sitecustomize.py"))  # installs the guard here

    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(NO_NETWORK), os.environ.get("PYTHONPATH")]))
    yield


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """One artefact cache (digits world, CLIP, localizer) for the whole test session."""
    path = Path(os.environ.get("CVPDL_TEST_CACHE") or tmp_path_factory.mktemp("cache"))
    return path


class CliResult(NamedTuple):
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def cli(capsys):
    """Run ``python -m benchmark`` in-process (fast): ``cli("run", ...)`` → (returncode, stdout, stderr)."""
    from benchmark.cli import main

    def run(*args) -> CliResult:
        try:
            code = main(list(args))
        except SystemExit as exit_:
            code = exit_.code
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)
    return run


def suite_folder(results_dir: Path, suite: str) -> Path:
    """Where a run of ``suite`` into ``results_dir`` wrote its files: ``<suite>/`` for the default run, else the
    one ``<suite>/<data>-<profile>-<hash>/`` folder (tests run the quick profile)."""
    base = Path(results_dir) / suite
    if (base / "run.json").is_file():
        return base
    found = [p.parent for p in base.glob("*/run.json")]
    assert len(found) == 1, f"expected one run under {base}, found {found}"
    return found[0]


def report_over(run_folder: Path, suite: str, tmp_path: Path) -> str:
    """``REPORT.md`` (which covers the default runs only) rendered as if the run in ``run_folder`` were the default."""
    import shutil

    from benchmark.report import report_markdown

    shutil.copytree(run_folder, tmp_path / "as_default" / suite, ignore=shutil.ignore_patterns("cells"))
    return report_markdown(tmp_path / "as_default")
