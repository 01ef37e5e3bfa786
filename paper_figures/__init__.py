"""One small module per report figure. ``render_suite_figures`` draws a suite's figures from its loaded results;
the caller (``benchmark.report``, ``python -m paper_figures``) reads them, so figures depend on no harness code."""
from __future__ import annotations

from pathlib import Path

from paper_figures import detr_figures, kd_figures, ovd_figures, sensitivity
from paper_figures.style import SuiteInputs, mark_smoke, save

FIGURES = {"detr": detr_figures.FIGURES, "kd": kd_figures.FIGURES, "ovd": ovd_figures.FIGURES}
# What each figure's marks are, quoted under it in REPORT.md.
CAPTIONS = {suite: {**captions, "sensitivity": sensitivity.CAPTION}
            for suite, captions in (("detr", detr_figures.CAPTIONS), ("kd", kd_figures.CAPTIONS),
                                    ("ovd", ovd_figures.CAPTIONS))}


def render_suite_figures(suite: str, inputs: SuiteInputs, figures_dir: Path) -> list[Path]:
    """Every figure of ``suite`` that its inputs can draw, as ``figures_dir/<name>.png`` (and ``.pdf``); a smoke
    run's figures say so in their title."""
    written = []
    swept = {"sensitivity": lambda inputs: sensitivity.sensitivity(inputs.tables["sensitivity"])
             } if "sensitivity" in inputs.tables else {}
    for name, draw in {**FIGURES.get(suite, {}), **swept}.items():
        figure = draw(inputs)
        if figure is not None:
            if inputs.smoke:
                mark_smoke(figure)
            written.append(save(figure, figures_dir / name))
    return written
