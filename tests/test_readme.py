"""The README stays a one-screen entry point: short, wrapped, its links alive, its test command the one CI runs."""
import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text()


def _prose_lines(text: str) -> list[str]:
    lines, in_code = [], False
    for line in text.splitlines():
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code and not line.startswith("|") and not line.startswith("!["):
            lines.append(line)
    return lines


def test_readme_is_short_and_wrapped():
    assert len(README.splitlines()) <= 150
    for path in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        long = [line for line in _prose_lines(path.read_text()) if len(line) > 120]
        assert not long, f"{path.name}: unwrapped lines {long[:2]}"


def test_readme_links_point_at_files_that_exist():
    for path in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#]+)\)", path.read_text()):
            if not target.startswith("http"):
                assert (path.parent / target).exists(), f"{path.name} links to missing {target}"


def test_ci_runs_the_readme_test_command_exactly():
    commands = re.findall(r"```bash\n(.*?)\n```", README, re.S)
    test_command = next(c for c in commands if "pytest" in c)
    assert test_command in (REPO / ".ci" / "run").read_text().splitlines()
