"""Constraints of the kd methods' configs that span sections, importable without torch: the command line checks
them against the catalog before it imports anything heavy (``benchmark.catalog.preflight``), and every run checks them
again when its plan is resolved (``REGISTRY.build``). Each takes the config (sections as dicts) and raises
``UserInputError`` naming the value."""
from __future__ import annotations

from cvpdl.errors import UserInputError


def check_hint_stage(hint: int, student_stages: int, teacher_stages: int) -> None:
    if student_stages != teacher_stages or not -student_stages <= hint < student_stages:
        raise UserInputError(f"fitnet.hint_stage={hint}: the nets have {student_stages} and {teacher_stages} stages "
                             "(the hint needs the same stage in both)")


def hint_stage_in_both_nets(cfg: dict) -> None:
    """FitNet's hint stage exists in the student and in the teacher (the same stage of each)."""
    check_hint_stage(cfg["fitnet"]["hint_stage"], len(cfg["student"]["widths"]), len(cfg["teacher"]["widths"]))
