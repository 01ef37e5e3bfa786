"""What the ``kd`` report says: the suite's family of claims, one verdict per claim, and the sections of summary.md
and REPORT.md that quote them. Prose only; the training code is in ``kd``."""
from __future__ import annotations

import numpy as np
import pandas as pd

from benchmark.claims import Arm, Claim, SuiteReport, Tested, describe, summary_row, summary_rows
from benchmark.registry import REGISTRY, Section


def _baseline() -> str:
    return REGISTRY.suite("kd").baseline


def claims(frame: pd.DataFrame) -> list[Claim]:
    """The suite's family of claims: every comparison its sections assert, Holm-adjusted together."""
    methods, base = set(frame["method"]), _baseline()
    out = [Claim(f"{m}:student", f"`{m}` − `{base}` test top-1 (last epoch)", Arm(m, "top1_last", "test"),
                 Arm(base, "top1_last", "test"))
           for m in REGISTRY.method_names("kd", methods) if m != base and base in methods]
    if {"gld", "logit_kd"} <= methods:
        out.append(Claim("gld:logit_kd", "`gld` − `logit_kd` test top-1", Arm("gld", "top1_last", "test"),
                         Arm("logit_kd", "top1_last", "test")))
    if {"reverse_feature_kd", "fitnet"} <= methods:
        out.append(Claim("reverse:fitnet", "`reverse_feature_kd` − `fitnet` test top-1",
                         Arm("reverse_feature_kd", "top1_last", "test"), Arm("fitnet", "top1_last", "test")))
    if "reverse_feature_kd" in methods:
        # the paper's premise is about the student trained alone (stage 0), not the distilled one
        out.append(Claim("premise:id", "teacher − student-alone intrinsic dimension (TwoNN, `reverse_feature_kd` "
                                       "cells)",
                         Arm("reverse_feature_kd", "intrinsic_dim", "teacher"),
                         Arm("reverse_feature_kd", "intrinsic_dim", "student_alone")))
    return out


def logit_kd_and_fitnet_vs_student_verdict(tested: dict[str, Tested]) -> str:
    parts = [f"{name} vs the student alone: {t.direction}" for key, name in (("logit_kd:student", "Logit KD"),
                                                                            ("fitnet:student", "FitNet"))
             if (t := tested.get(key)) is not None]
    return "; ".join(parts) + " (Holm-adjusted over the suite's claims)." if parts else ""


def gld_vs_logit_kd_verdict(t: Tested) -> str:
    return "The paper reports GLD above logit KD; measured: " + t.direction + "."


def intrinsic_dimension_premise_verdict(tested: dict[str, Tested]) -> str:
    premise = tested.get("premise:id")
    if premise is None or not premise.n:
        return ""
    holds = {"lower": "holds", "higher": "is contradicted", "no significant difference": "is not supported"}
    return (f"The paper's premise (teacher ID below student ID) {holds.get(premise.direction, 'is untested')} "
            f"here (teacher − student: {premise.direction}); ")


def reverse_kd_vs_fitnet_verdict(tested: dict[str, Tested]) -> str:
    rev = tested.get("reverse:fitnet")
    return "reverse feature KD vs FitNet: " + rev.direction + "." if rev is not None else ""


def _mle_order(rows: pd.DataFrame, splits: tuple[str, ...]) -> str:
    """Whether the MLE estimates rank the models' mean intrinsic dimensions as TwoNN does (checked, not assumed)."""
    pairs = [(summary_row(rows, "reverse_feature_kd", "intrinsic_dim", s), summary_row(rows, "reverse_feature_kd",
                                                                        "intrinsic_dim_mle", s)) for s in splits]
    pairs = [(a["mean"], b["mean"]) for a, b in pairs if a is not None and b is not None]
    if len(pairs) < 2:
        return ""
    same = np.array_equal(np.argsort([a for a, _ in pairs]), np.argsort([b for _, b in pairs]))
    return "the same order of means as TwoNN" if same else "a different order of means from TwoNN"


def _sections(frame: pd.DataFrame, timings: pd.DataFrame | None, tested: dict[str, Tested]) -> list[Section]:
    rows = summary_rows(frame)
    methods, base = set(frame["method"]), _baseline()
    first = sorted(methods)[0]
    lines = [f"Teacher test top-1 {describe(rows, first, 'teacher_top1', 'test')}; student alone "
             f"{describe(rows, base, 'top1_last', 'test')}."]
    for m in REGISTRY.method_names("kd", methods):
        if m != base:
            extra = summary_row(rows, m, "extra_params", "test")
            lines.append(f"`{m}` top-1 (last epoch) {describe(rows, m, 'top1_last', 'test')}"
                         + (f"; vs `{base}` {t.line()}" if (t := tested.get(f"{m}:student")) is not None else "")
                         + (f"; extra trainable parameters {int(extra['mean'])}" if extra is not None else "") + ".")
    # training time stays in summary.md's timings table: wall clock under whatever else ran is no claim
    sections = [Section(
        "B1. Distilling from logits vs from intermediate layers",
        "Logit distillation matches output distributions: simple, architecture-agnostic, needs only the teacher's "
        "outputs. Feature distillation matches internal representations: more signal, often said to transfer more, "
        "but it needs aligned shapes (a regressor) and suffers when teacher and student differ a lot.",
        lines, ["kd_accuracy", "kd_curves"], logit_kd_and_fitnet_vs_student_verdict(tested))]
    if (t := tested.get("gld:logit_kd")) is not None:
        sections.append(Section(
            "B2. GLD: global and local logits with dense relations (Kim et al., ICCV 2021)",
            "Global pooling discards spatial knowledge; GLD also distils local logits of spatial regions of the last "
            "feature map (through the network's own classifier), standardises the logits, and matches the relations "
            "between all global and local logits in the batch.",
            [f"`gld` vs `logit_kd`, top-1: {t.line()}."], ["kd_accuracy"], gld_vs_logit_kd_verdict(t)))
    if "reverse_feature_kd" in methods:
        lines = []
        if (t := tested.get("reverse:fitnet")) is not None:
            lines.append(f"`reverse_feature_kd` vs `fitnet`, top-1: {t.line()}.")
        splits = ("teacher", "student_alone", "student", "teacher_after_reverse")
        lines.append("TwoNN intrinsic dimension of the embeddings: teacher "
                     f"{describe(rows, 'reverse_feature_kd', 'intrinsic_dim', 'teacher')}, student trained alone "
                     f"{describe(rows, 'reverse_feature_kd', 'intrinsic_dim', 'student_alone')}, reverse-distilled "
                     f"student {describe(rows, 'reverse_feature_kd', 'intrinsic_dim', 'student')}, teacher "
                     f"after reverse distillation "
                     f"{describe(rows, 'reverse_feature_kd', 'intrinsic_dim', 'teacher_after_reverse')}.")
        if (t := tested.get("premise:id")) is not None:
            lines.append(f"Teacher − student-alone intrinsic dimension, paired by seed: {t.line()}.")
        mle = " / ".join(describe(rows, "reverse_feature_kd", "intrinsic_dim_mle", s) for s in splits)
        order = _mle_order(rows, splits)
        lines.append("MLE estimates (teacher / student alone / reverse-distilled student / teacher after reverse): "
                     f"{mle}" + (f"; {order}" if order else "") + ".")
        sections.append(Section(
            "B3. Reverse feature distillation (Li et al., CVPR 2023)",
            "A large teacher can represent data with an intrinsic dimension a small student cannot reach, making "
            "plain feature mimicking hard; training the teacher to also mimic a trained student's features first "
            "(reverse distillation) closes the gap, and the student then distils from that teacher.",
            lines, ["intrinsic_dimension"],
            intrinsic_dimension_premise_verdict(tested) + reverse_kd_vs_fitnet_verdict(tested)))
    return sections


report_sections = SuiteReport(claims, _sections)
