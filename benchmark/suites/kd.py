"""Suite ``kd``: distilling from logits (Hinton KD, GLD) vs from intermediate layers (FitNet, reverse feature KD).

Data: single tinted MNIST digits on cluttered 32-px canvases (digit pools disjoint across splits), or an
ImageFolder. The teacher is trained once per seed and cached by config hash; every method distils from it.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from benchmark.cache import cache_key, cached_state
from benchmark.claims import (
    Arm,
    CellResult,
    Claim,
    RunContext,
    SuiteReport,
    Tested,
    describe,
    summary_row,
    summary_rows,
)
from benchmark.config import section_config
from benchmark.registry import REGISTRY, Deviation, MethodSpec, SearchParam, Section, SuiteSpec
from cvpdl.analysis.intrinsic_dimension import intrinsic_dimension
from cvpdl.checkpoint import Checkpoint
from cvpdl.data.digits_world import GENERATOR_VERSION, DigitsWorldConfig, load_digits_split
from cvpdl.data.imagefolder import load_imagefolder
from cvpdl.distill.fitnet import FitNet, FitNetConfig
from cvpdl.distill.gld import GLD, GLDConfig
from cvpdl.distill.logit_kd import LogitKD, LogitKDConfig
from cvpdl.distill.networks import ConvNet, NetConfig
from cvpdl.distill.reverse_feature_kd import ReverseKDConfig, fit_reverse
from cvpdl.distill.student_baseline import StudentBaseline
from cvpdl.distill.training import ClassificationData, TrainConfig, fit_distiller, predict, top1, train


@dataclass(frozen=True)
class KDWorldConfig(DigitsWorldConfig):
    canvas_size: int = 32
    min_digits: int = 1
    max_digits: int = 1
    digit_size: tuple[int, int] = (12, 26)
    clutter: float = 0.5


@dataclass(frozen=True)
class KDDataConfig:
    train_images: int = 4000
    val_images: int = 1000
    test_images: int = 2000
    id_samples: int = 1000  # test embeddings per model for the intrinsic dimension
    image_size: int = 32  # ImageFolder images are resized to this


@dataclass(frozen=True)
class TeacherNetConfig(NetConfig):
    widths: tuple[int, ...] = (32, 64, 128)
    blocks_per_stage: int = 2


@dataclass(frozen=True)
class StudentNetConfig(NetConfig):
    widths: tuple[int, ...] = (4, 8, 16)
    blocks_per_stage: int = 1


@dataclass(frozen=True)
class TeacherTrainConfig(TrainConfig):
    epochs: int = 10


@dataclass
class KDShared:
    data: ClassificationData


def _to_tensor(images: np.ndarray) -> torch.Tensor:
    return (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0 - 0.5) / 0.25


def prepare(run: RunContext) -> KDShared:
    data_cfg = section_config(run.cfg, "data", KDDataConfig)
    if run.data == "imagefolder":
        splits = {s: load_imagefolder(Path(run.data_root) / s, data_cfg.image_size) for s in ("train", "val", "test")}
        classes = len(splits["train"][2])
        parts = {s: (_to_tensor(x), torch.as_tensor(y)) for s, (x, y, _) in splits.items()}
    else:
        world = section_config(run.cfg, "world", KDWorldConfig)
        sizes = {"train": data_cfg.train_images, "val": data_cfg.val_images, "test": data_cfg.test_images}
        parts, classes = {}, 10
        for split, n in sizes.items():
            d = load_digits_split(world, split, n, world.seed, run.cache_dir, (1, 1))
            labels = torch.as_tensor(np.array([d.target(i)[1][0] for i in range(len(d))]))
            parts[split] = (_to_tensor(d.images), labels)
    return KDShared(ClassificationData(*parts["train"], *parts["val"], *parts["test"], num_classes=classes))


def _teacher(run: RunContext, shared: KDShared, seed: int) -> ConvNet:
    """Trained once per (config, seed) and cached: every method of that seed distils from the same teacher."""
    cfg = run.cfg
    torch.manual_seed(seed)
    teacher = ConvNet(section_config(cfg, "teacher", TeacherNetConfig), shared.data.num_classes)
    key = cache_key(GENERATOR_VERSION, cfg["world"], cfg["data"], cfg["teacher"], cfg["teacher_train"], run.data,
                    run.data_root, seed)
    cached_state(run.cache_dir / "kd_teacher" / f"teacher_{key}.pt", teacher,
                  lambda: train(StudentBaseline(teacher), shared.data, section_config(cfg, "teacher_train",
                                TeacherTrainConfig), torch.Generator().manual_seed(seed), desc="teacher"))
    return teacher.eval().requires_grad_(False)


def run_cell(run: RunContext, shared: KDShared, method: MethodSpec, seed: int, generator: torch.Generator
             ) -> CellResult:
    data, cfg = shared.data, run.cfg
    teacher = _teacher(run, shared, seed)
    torch.manual_seed(seed)  # the same student initialisation whether the teacher came from the cache or not
    generator.manual_seed(seed)
    student_cfg = section_config(cfg, "student", StudentNetConfig)

    def make_student() -> ConvNet:
        return ConvNet(student_cfg, data.num_classes)

    started = time.perf_counter()
    fit = method.build(cfg)(make_student, teacher, data, section_config(cfg, "train", TrainConfig), generator,
                            Checkpoint(run.checkpoints, method.name))
    seconds = time.perf_counter() - started
    records = [{"epoch": e + 1, "split": "val" if name == "top1" else "train", "metric": name, "value": v}
               for name, values in fit.history.per_epoch.items() for e, v in enumerate(values)]
    final = {"top1_last": fit.history.top1_last, "top1_best": fit.history.top1_best,
             "teacher_top1": top1(teacher, data.x_test, data.y_test),
             "student_params": float(sum(p.numel() for p in fit.student.parameters())),
             "extra_params": float(fit.extra_parameters)}
    records += [{"epoch": None, "split": "test", "metric": k, "value": v} for k, v in final.items()]
    # embedding intrinsic dimension of every model a method produced; `student_alone` is reverse KD's stage-0 student
    # (CE alone, with reverse KD's own training values), so the premise "teacher ID vs a student's own ID" is testable
    n = section_config(cfg, "data", KDDataConfig).id_samples
    models = {"teacher": teacher, "student": fit.student, "teacher_after_reverse": fit.teacher_after_reverse,
              "student_alone": fit.student_alone}
    for split, model in models.items():
        if model is None:
            continue
        dims = intrinsic_dimension(predict(model, data.x_test[:n])["embedding"].numpy())
        records += [{"epoch": None, "split": split, "metric": "intrinsic_dim", "value": dims["twonn"]},
                    {"epoch": None, "split": split, "metric": "intrinsic_dim_mle", "value": dims["mle"]}]
    timings = [{"epoch": None, "split": "train", "metric": "train_seconds", "value": seconds}]
    return CellResult(records, timings)


BASE = "student_baseline"


def claims(frame: pd.DataFrame) -> list[Claim]:
    """The suite's family of claims: every comparison its sections assert, Holm-adjusted together."""
    methods = set(frame["method"])
    out = [Claim(f"{m}:student", f"`{m}` − `{BASE}` test top-1 (last epoch)", Arm(m, "top1_last", "test"),
                 Arm(BASE, "top1_last", "test"))
           for m in REGISTRY.method_names("kd", methods) if m != BASE and BASE in methods]
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


def _b1_verdict(tested: dict[str, Tested]) -> str:
    parts = [f"{name} vs the student alone: {t.direction}" for key, name in (("logit_kd:student", "Logit KD"),
                                                                            ("fitnet:student", "FitNet"))
             if (t := tested.get(key)) is not None]
    return "; ".join(parts) + " (Holm-adjusted over the suite's claims)." if parts else ""


def _b3_verdict(tested: dict[str, Tested]) -> str:
    premise = tested.get("premise:id")
    text = ""
    if premise is not None and premise.n:
        holds = {"lower": "holds", "higher": "is contradicted", "no significant difference": "is not supported"}
        text = (f"The paper's premise (teacher ID below student ID) {holds.get(premise.direction, 'is untested')} "
                f"here (teacher − student: {premise.direction}); ")
    rev = tested.get("reverse:fitnet")
    return text + ("reverse feature KD vs FitNet: " + rev.direction + "." if rev is not None else "")


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
    methods = set(frame["method"])
    first = sorted(methods)[0]
    lines = [f"Teacher test top-1 {describe(rows, first, 'teacher_top1', 'test')}; student alone "
             f"{describe(rows, BASE, 'top1_last', 'test')}."]
    for m in REGISTRY.method_names("kd", methods):
        if m != BASE:
            extra = summary_row(rows, m, "extra_params", "test")
            lines.append(f"`{m}` top-1 (last epoch) {describe(rows, m, 'top1_last', 'test')}"
                         + (f"; vs `{BASE}` {t.line()}" if (t := tested.get(f"{m}:student")) is not None else "")
                         + (f"; extra trainable parameters {int(extra['mean'])}" if extra is not None else "") + ".")
    # training time stays in summary.md's timings table: wall clock under whatever else ran is no claim
    sections = [Section(
        "B1. Distilling from logits vs from intermediate layers",
        "Logit distillation matches output distributions: simple, architecture-agnostic, needs only the teacher's "
        "outputs. Feature distillation matches internal representations: more signal, often said to transfer more, "
        "but it needs aligned shapes (a regressor) and suffers when teacher and student differ a lot.",
        lines, ["kd_accuracy", "kd_curves"], _b1_verdict(tested))]
    if (t := tested.get("gld:logit_kd")) is not None:
        sections.append(Section(
            "B2. GLD: global and local logits with dense relations (Kim et al., ICCV 2021)",
            "Global pooling discards spatial knowledge; GLD also distils local logits of spatial regions of the last "
            "feature map (through the network's own classifier), standardises the logits, and matches the relations "
            "between all global and local logits in the batch.",
            [f"`gld` vs `logit_kd`, top-1: {t.line()}."], ["kd_accuracy"],
            "The paper reports GLD above logit KD; measured: " + t.direction + "."))
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
            lines, ["intrinsic_dimension"], _b3_verdict(tested)))
    return sections


report_sections = SuiteReport(claims, _sections)


PROFILES = {
    "quick": {"data.train_images": 800, "data.val_images": 200, "data.test_images": 300, "data.id_samples": 300,
              "train.epochs": 2, "teacher_train.epochs": 2, "reverse_feature_kd.teacher_epochs": 1},
    "default": {},
    "full": {"data.train_images": 20000, "data.test_images": 5000, "train.epochs": 40, "teacher_train.epochs": 40,
             "teacher.widths": [64, 128, 256], "reverse_feature_kd.teacher_epochs": 10},
}

REGISTRY.register_suite(SuiteSpec(
    name="kd",
    question="Distilling from logits (Hinton KD, GLD) vs from intermediate layers (FitNet, reverse feature KD)",
    dataset="digits world classification (single digits on cluttered 32-px canvases), or an ImageFolder",
    datasets=("digits", "imagefolder"),
    config={"world": KDWorldConfig, "data": KDDataConfig, "teacher": TeacherNetConfig, "student": StudentNetConfig,
            "teacher_train": TeacherTrainConfig, "train": TrainConfig},
    profiles=PROFILES,
    prepare=prepare,
    run_cell=run_cell,
    baseline="student_baseline",
    headline=(("top1_last", "test"), ("top1_best", "test"), ("teacher_top1", "test")),
    report_sections=report_sections,
    tuning_objective=("top1", "val"),
))


LR = SearchParam("train.lr", 1e-3, 1e-2, log=True)  # every student's own learning rate is tuned, the baseline's too


def _register(name: str, paper: str, build, config=None, deviations: tuple[Deviation, ...] = (),
              search_space: tuple[SearchParam, ...] = ()):
    REGISTRY.register_method(MethodSpec(name=name, suite="kd", paper=paper, build=build, config=config or {},
                                        deviations=deviations, search_space=(LR, *search_space)))


GLD_DEVIATIONS = (
    Deviation(what="local logits go through the whole head (Linear → BatchNorm1d → classifier); the BatchNorm1d "
                   "normalises region rows with the whole-image batch statistics of the same step and its running "
                   "statistics see whole images only",
              why="the official ResNet head is a single Linear after pooling, so regions need no normalisation; this "
                  "net's head has a BatchNorm1d, and batch statistics over region rows would mix two distributions"),
)
REVERSE_KD_DEVIATIONS = (
    Deviation(what="no student proxy: stage 1 mimics the stage-0 student's embedding itself (the paper's plain "
                   "reverse distillation)",
              why="neither official code nor a retrievable description of the proxy's construction was found, so "
                  "implementing one would be a guess; the stage-0 student's own intrinsic dimension is recorded "
                  "(split `student_alone`) to test the premise the proxy serves"),
    Deviation(what="stage 1 fine-tunes the cached trained teacher (teacher_epochs, lr/3) instead of training the "
                   "teacher from scratch under CE + reverse MSE",
              why="one teacher per seed is shared by every method and the stage budget is small"),
)


_register("student_baseline", "the student trained alone with cross-entropy",
          lambda cfg: lambda make, teacher, data, tc, g, ckpt: fit_distiller(
              StudentBaseline(make()), data, tc, g, ckpt),
          search_space=(SearchParam("train.weight_decay", 1e-5, 1e-3, log=True),))
_register("logit_kd", "Hinton, Vinyals, Dean, Distilling the Knowledge in a Neural Network, 2015",
          lambda cfg: lambda make, teacher, data, tc, g, ckpt: fit_distiller(
              LogitKD(make(), teacher, section_config(cfg, "logit_kd", LogitKDConfig)), data, tc, g, ckpt),
          {"logit_kd": LogitKDConfig},
          search_space=(SearchParam("logit_kd.temperature", 1.0, 8.0), SearchParam("logit_kd.kd_weight", 0.1, 0.95)))
_register("gld", "Kim et al., Distilling Global and Local Logits with Densely Connected Relations, ICCV 2021",
          lambda cfg: lambda make, teacher, data, tc, g, ckpt: fit_distiller(
              GLD(make(), teacher, section_config(cfg, "gld", GLDConfig)), data, tc, g, ckpt),
          {"gld": GLDConfig}, GLD_DEVIATIONS,
          (SearchParam("gld.alpha", 0.1, 0.95), SearchParam("gld.beta", 10.0, 5000.0, log=True)))
_register("fitnet", "Romero et al., FitNets: Hints for Thin Deep Nets, ICLR 2015",
          lambda cfg: lambda make, teacher, data, tc, g, ckpt: fit_distiller(
              FitNet(make(), teacher, section_config(cfg, "fitnet", FitNetConfig)), data, tc, g, ckpt),
          {"fitnet": FitNetConfig},
          search_space=(SearchParam("fitnet.hint_weight", 1.0, 300.0, log=True),
                        SearchParam("fitnet.hint_stage", choices=(0, 1, 2))))
_register("reverse_feature_kd", "Li et al., Rethinking Feature-based Knowledge Distillation for Face Recognition, "
                                "CVPR 2023",
          lambda cfg: lambda make, teacher, data, tc, g, ckpt: fit_reverse(
              make, teacher, data, tc, section_config(cfg, "reverse_feature_kd", ReverseKDConfig), g, ckpt),
          {"reverse_feature_kd": ReverseKDConfig}, REVERSE_KD_DEVIATIONS,
          (SearchParam("reverse_feature_kd.reverse_weight", 0.1, 10.0, log=True),
           SearchParam("reverse_feature_kd.feature_weight", 0.1, 10.0, log=True)))
