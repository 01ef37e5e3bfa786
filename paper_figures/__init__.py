"""One small module per report figure. ``render_suite_figures`` draws a suite's figures from its result files."""
from __future__ import annotations

from pathlib import Path

from paper_figures import detr_figures, kd_figures, ovd_figures

FIGURES = {"detr": detr_figures.FIGURES, "kd": kd_figures.FIGURES, "ovd": ovd_figures.FIGURES}
# What each figure's marks are, quoted under it in REPORT.md.
CAPTIONS = {"detr": detr_figures.CAPTIONS, "kd": kd_figures.CAPTIONS, "ovd": ovd_figures.CAPTIONS}


def render_suite_figures(suite: str, suite_dir: Path) -> list[Path]:
    from paper_figures.style import load_inputs, save

    inputs = load_inputs(suite_dir)
    written = []
    for name, draw in FIGURES.get(suite, {}).items():
        figure = draw(inputs)
        if figure is not None:
            written.append(save(figure, suite_dir / "figures" / name))
    return written
