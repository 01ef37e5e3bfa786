"""What the ``kd`` report says: the suite's family of claims, one verdict per claim, and the sections of summary.md
and REPORT.md that quote them. Prose only; the training code is in ``kd``."""
from __future__ import annotations

import numpy as np
import pandas as pd

from benchmark.claims import Arm, Claim, Tested, brief_line
from benchmark.findings import Finding, SuiteReport, finding, paper_verdict
from benchmark.metric_summaries import describe, summary_row, summary_rows
from benchmark.registry import REGISTRY, Section


def _baseline() -> str:
    return REGISTRY.suite("kd").baseline


# the smallest effect of interest on top-1: half a point (mdistiller's CIFAR-100 KD gain is +0.8), and half a
# dimension of intrinsic dimension
DELTA_TOP1, DELTA_ID = 0.005, 0.5
B1 = "B1. Distilling from logits vs from intermediate layers"
B2 = "B2. GLD: global and local logits with dense relations (Kim et al., ICCV 2021)"
B3 = "B3. Reverse feature distillation (Li et al., CVPR 2023)"


def _top1(key: str, a: str, b: str, role: str = "secondary") -> Claim:
    return Claim(key, f"`{a}` − `{b}` test top-1 (last epoch)", Arm(a, "top1_last", "test"),
                 Arm(b, "top1_last", "test"), role=role, expected="higher", delta=DELTA_TOP1)


def _premise(key: str, metric: str, estimator: str, role: str) -> Claim:
    # the paper's premise is about the student trained alone (stage 0), not the distilled one
    return Claim(key, f"teacher − student-alone intrinsic dimension ({estimator}, `reverse_feature_kd` cells)",
                 Arm("reverse_feature_kd", metric, "teacher"), Arm("reverse_feature_kd", metric, "student_alone"),
                 role=role, expected="lower", delta=DELTA_ID)


def claims(frame: pd.DataFrame) -> list[Claim]:
    """The suite's claims: the positive control (logit KD beats the student alone), the four primary claims that
    answer B1-B3 (each method against the baseline that isolates its idea), the rest secondary."""
    methods, base = set(frame["method"]), _baseline()
    out = []
    if {"logit_kd", base} <= methods:
        out.append(_top1("logit_kd:student", "logit_kd", base, "control"))
    if {"fitnet", base} <= methods:
        out.append(_top1("fitnet:student", "fitnet", base, "primary"))
    if {"gld", "logit_kd"} <= methods:
        out.append(_top1("gld:logit_kd", "gld", "logit_kd", "primary"))
    if {"reverse_feature_kd", "fitnet"} <= methods:
        out.append(_top1("reverse:fitnet", "reverse_feature_kd", "fitnet", "primary"))
    if "reverse_feature_kd" in methods:
        out += [_premise("premise:id", "intrinsic_dim", "TwoNN", "primary"),
                _premise("premise:id_mle", "intrinsic_dim_mle", "MLE", "secondary")]
    out += [_top1(f"{m}:student", m, base) for m in REGISTRY.method_names("kd", methods)
            if m not in (base, "logit_kd", "fitnet") and base in methods]
    if {"fitnet", "logit_kd"} <= methods:
        out.append(_top1("fitnet:logit_kd", "fitnet", "logit_kd"))
    return out


def premise_verdict(tested: dict[str, Tested]) -> str:
    """The premise by TwoNN, "inconclusive" where the MLE estimate points the other way."""
    two_nn, mle = tested.get("premise:id"), tested.get("premise:id_mle")
    if two_nn is None or not two_nn.n:
        return "untestable here: not measured in this run"
    if mle is not None and mle.n and (two_nn.diff > 0) != (mle.diff > 0):
        return "inconclusive: the TwoNN and MLE estimators disagree on the sign"
    return paper_verdict(two_nn)


def _vs_student(tested: dict[str, Tested], method: str) -> str:
    t = tested.get(f"{method}:student")
    return "" if t is None else f"against the student alone {brief_line(t)}"


def _b1_verdict(tested: dict[str, Tested]) -> str:
    return " ".join(f"{paper_verdict(t).capitalize()}: {t.claim.text}, {t.line()}." for key in
                    ("logit_kd:student", "fitnet:student", "fitnet:logit_kd") if (t := tested.get(key)) is not None)


def _one_verdict(t: Tested, cost: str) -> str:
    return f"{paper_verdict(t).capitalize()}: {t.claim.text}, {t.line()}" + (f"; {cost}" if cost else "") + "."


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
    if (t := tested.get("fitnet:logit_kd")) is not None:
        lines.append(f"`fitnet` vs `logit_kd`, top-1: {t.line()}.")
    # training time stays in summary.md's timings table: wall clock under whatever else ran is no claim
    sections = [Section(
        B1,
        "Logit distillation matches output distributions: simple, architecture-agnostic, needs only the teacher's "
        "outputs. Feature distillation matches internal representations: more signal, often said to transfer more, "
        "but it needs aligned shapes (a regressor) and suffers when teacher and student differ a lot.",
        lines, ["kd_accuracy", "kd_curves"], _b1_verdict(tested))]
    if (t := tested.get("gld:logit_kd")) is not None:
        sections.append(Section(
            B2,
            "Global pooling discards spatial knowledge; GLD also distils local logits of spatial regions of the last "
            "feature map (through the network's own classifier), standardises the logits, and matches the relations "
            "between all global and local logits in the batch.",
            [f"`gld` vs `logit_kd`, top-1: {t.line()}."], ["kd_accuracy"],
            _one_verdict(t, _vs_student(tested, "gld"))))
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
        lines += [f"Teacher − student-alone intrinsic dimension ({name}), paired by seed: {t.line()}."
                  for key, name in (("premise:id", "TwoNN"), ("premise:id_mle", "MLE"))
                  if (t := tested.get(key)) is not None]
        mle = " / ".join(describe(rows, "reverse_feature_kd", "intrinsic_dim_mle", s) for s in splits)
        order = _mle_order(rows, splits)
        lines.append("MLE estimates (teacher / student alone / reverse-distilled student / teacher after reverse): "
                     f"{mle}" + (f"; {order}" if order else "") + ".")
        verdict = f"The paper's premise (teacher intrinsic dimension below the student's): {premise_verdict(tested)}."
        if (t := tested.get("reverse:fitnet")) is not None:
            verdict += " " + _one_verdict(t, _vs_student(tested, "reverse_feature_kd"))
        sections.append(Section(
            B3,
            "A large teacher can represent data with an intrinsic dimension a small student cannot reach, making "
            "plain feature mimicking hard; training the teacher to also mimic a trained student's features first "
            "(reverse distillation) closes the gap, and the student then distils from that teacher.",
            lines, ["intrinsic_dimension"], verdict))
    return sections


def findings(frame: pd.DataFrame, tested: dict[str, Tested]) -> list[Finding]:
    """REPORT.md's first table: each distiller against the baseline that isolates its idea, with what it costs
    against the student alone."""
    two_nn = tested.get("premise:id")
    premise = Finding(B3, "Teacher features have a lower intrinsic dimension than the student's (premise)",
                      premise_verdict(tested),
                      "" if two_nn is None else "; ".join(f"{t.claim.text}: {t.line()}" for key in
                                                          ("premise:id", "premise:id_mle")
                                                          if (t := tested.get(key)) is not None), two_nn)
    return [
        finding(B1, "Feature distillation (FitNet) improves the student trained alone", tested.get("fitnet:student")),
        finding(B2, "GLD beats logit KD", tested.get("gld:logit_kd"), _vs_student(tested, "gld")),
        finding(B3, "Reverse feature KD beats plain feature KD (FitNet)", tested.get("reverse:fitnet"),
                _vs_student(tested, "reverse_feature_kd")),
        premise,
        Finding(B1, "The gain of distillation grows with the teacher–student capacity gap",
                "untestable here: one teacher and one student architecture, no sweep of the gap"),
    ]


report_sections = SuiteReport(claims, _sections, findings)
