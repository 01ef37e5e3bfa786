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
from benchmark.config import section_config
from benchmark.registry import REGISTRY, MethodSpec, Section, SuiteSpec
from benchmark.report import cell, describe, direction, paired_comparison, paired_verdict, summary_rows
from benchmark.runner import CellResult, RunContext
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

METHODS = ("student_baseline", "logit_kd", "gld", "fitnet", "reverse_feature_kd")


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
    if method.name in ("fitnet", "reverse_feature_kd"):
        n = section_config(cfg, "data", KDDataConfig).id_samples
        models = {"teacher": teacher, "student": fit.student}
        if fit.teacher_after_reverse is not None:
            models["teacher_after_reverse"] = fit.teacher_after_reverse
        for split, model in models.items():
            dims = intrinsic_dimension(predict(model, data.x_test[:n])["embedding"].numpy())
            records += [{"epoch": None, "split": split, "metric": "intrinsic_dim", "value": dims["twonn"]},
                        {"epoch": None, "split": split, "metric": "intrinsic_dim_mle", "value": dims["mle"]}]
    timings = [{"epoch": None, "split": "train", "metric": "train_seconds", "value": seconds}]
    return CellResult(records, timings)


def _b1_verdict(frame: pd.DataFrame, base: str) -> str:
    logit = direction(paired_comparison(frame, "logit_kd", base, "top1_last", "test"))
    feature = direction(paired_comparison(frame, "fitnet", base, "top1_last", "test"))
    text = f"Logit KD vs the student alone: {logit}; FitNet vs the student alone: {feature}."
    if feature == "lower" and logit != "lower":
        text += (" With a student much thinner than its teacher, feature mimicking hurt while logit matching did "
                 "not: the mismatch cost the literature warns about, not the extra signal it promises.")
    return text


def _b3_verdict(frame: pd.DataFrame, rows: pd.DataFrame) -> str:
    teacher = cell(rows, "reverse_feature_kd", "intrinsic_dim", "teacher")
    student = cell(rows, "reverse_feature_kd", "intrinsic_dim", "student")
    premise = ("" if teacher is None or student is None else
               "The paper's premise (teacher ID below student ID) " +
               ("holds" if teacher["mean"] < student["mean"] else "does not hold") + " here; ")
    return premise + "reverse feature KD vs FitNet: " + direction(
        paired_comparison(frame, "reverse_feature_kd", "fitnet", "top1_last", "test")) + "."


def report_sections(frame: pd.DataFrame, timings: pd.DataFrame | None) -> list[Section]:
    rows = summary_rows(frame)
    methods = set(frame["method"])
    base = "student_baseline"
    first = sorted(methods)[0]
    lines = [f"Teacher test top-1 {describe(rows, first, 'teacher_top1', 'test')}; student alone "
             f"{describe(rows, base, 'top1_last', 'test')}."]
    for m in METHODS[1:]:
        if m in methods:
            lines.append(f"`{m}` top-1 (last epoch) {describe(rows, m, 'top1_last', 'test')}; vs `{base}` "
                         f"{paired_verdict(frame, m, base, 'top1_last', 'test')}; extra trainable parameters "
                         f"{int(rows[(rows.method == m) & (rows.metric == 'extra_params')]['mean'].iloc[0])}.")
    if timings is not None and not timings.empty:
        t = summary_rows(timings)
        lines.append("Training time per cell (s, this run's device): " + ", ".join(
            f"`{r.method}` {r.mean:.0f}" for r in t.itertuples() if r.metric == "train_seconds") + ".")
    sections = [Section(
        "B1. Distilling from logits vs from intermediate layers",
        "Logit distillation matches output distributions: simple, architecture-agnostic, needs only the teacher's "
        "outputs. Feature distillation matches internal representations: more signal, often said to transfer more, "
        "but it needs aligned shapes (a regressor) and suffers when teacher and student differ a lot.",
        lines, ["kd_accuracy", "kd_curves"], _b1_verdict(frame, base))]
    if "gld" in methods and "logit_kd" in methods:
        sections.append(Section(
            "B2. GLD: global and local logits with dense relations (Kim et al., ICCV 2021)",
            "Global pooling discards spatial knowledge; GLD also distils local logits of spatial regions of the last "
            "feature map (through the network's own classifier), standardises the logits, and matches the relations "
            "between all global and local logits in the batch.",
            [f"`gld` vs `logit_kd`, top-1: {paired_verdict(frame, 'gld', 'logit_kd', 'top1_last', 'test')}."],
            ["kd_accuracy"],
            "The paper reports GLD above logit KD; measured: "
            + direction(paired_comparison(frame, "gld", "logit_kd", "top1_last", "test")) + "."))
    if "reverse_feature_kd" in methods:
        lines = []
        if "fitnet" in methods:
            lines.append(f"`reverse_feature_kd` vs `fitnet`, top-1: "
                         f"{paired_verdict(frame, 'reverse_feature_kd', 'fitnet', 'top1_last', 'test')}.")
        lines.append(f"TwoNN intrinsic dimension of the embeddings: teacher "
                     f"{describe(rows, 'reverse_feature_kd', 'intrinsic_dim', 'teacher')}, reverse-distilled "
                     f"student {describe(rows, 'reverse_feature_kd', 'intrinsic_dim', 'student')}, teacher "
                     f"after reverse distillation "
                     f"{describe(rows, 'reverse_feature_kd', 'intrinsic_dim', 'teacher_after_reverse')} "
                     f"(MLE cross-check, same order: "
                     + " / ".join(describe(rows, 'reverse_feature_kd', 'intrinsic_dim_mle', s)
                                  for s in ('teacher', 'student', 'teacher_after_reverse')) + ").")
        sections.append(Section(
            "B3. Reverse feature distillation (Li et al., CVPR 2023)",
            "A large teacher can represent data with an intrinsic dimension a small student cannot reach, making "
            "plain feature mimicking hard; training the teacher to also mimic a trained student's features first "
            "(reverse distillation) closes the gap, and the student then distils from that teacher.",
            lines, ["intrinsic_dimension"], _b3_verdict(frame, rows)))
    return sections


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
    dataset="digits world classification (single digits on cluttered 32-px canvases), or --data imagefolder",
    config={"world": KDWorldConfig, "data": KDDataConfig, "teacher": TeacherNetConfig, "student": StudentNetConfig,
            "teacher_train": TeacherTrainConfig, "train": TrainConfig},
    profiles=PROFILES,
    prepare=prepare,
    run_cell=run_cell,
    baseline="student_baseline",
    headline=(("top1_last", "test"), ("top1_best", "test"), ("teacher_top1", "test")),
    report_sections=report_sections,
))


def _register(name: str, paper: str, build, config=None):
    REGISTRY.register_method(MethodSpec(name=name, suite="kd", paper=paper, build=build, config=config or {}))


_register("student_baseline", "the student trained alone with cross-entropy",
          lambda cfg: lambda make, teacher, data, tc, g, ckpt: fit_distiller(
              StudentBaseline(make()), data, tc, g, ckpt))
_register("logit_kd", "Hinton, Vinyals, Dean, Distilling the Knowledge in a Neural Network, 2015",
          lambda cfg: lambda make, teacher, data, tc, g, ckpt: fit_distiller(
              LogitKD(make(), teacher, section_config(cfg, "logit_kd", LogitKDConfig)), data, tc, g, ckpt),
          {"logit_kd": LogitKDConfig})
_register("gld", "Kim et al., Distilling Global and Local Logits with Densely Connected Relations, ICCV 2021",
          lambda cfg: lambda make, teacher, data, tc, g, ckpt: fit_distiller(
              GLD(make(), teacher, section_config(cfg, "gld", GLDConfig)), data, tc, g, ckpt),
          {"gld": GLDConfig})
_register("fitnet", "Romero et al., FitNets: Hints for Thin Deep Nets, ICLR 2015",
          lambda cfg: lambda make, teacher, data, tc, g, ckpt: fit_distiller(
              FitNet(make(), teacher, section_config(cfg, "fitnet", FitNetConfig)), data, tc, g, ckpt),
          {"fitnet": FitNetConfig})
_register("reverse_feature_kd", "Li et al., Rethinking Feature-based Knowledge Distillation for Face Recognition, "
                                "CVPR 2023",
          lambda cfg: lambda make, teacher, data, tc, g, ckpt: fit_reverse(
              make, teacher, data, tc, section_config(cfg, "reverse_feature_kd", ReverseKDConfig), g, ckpt),
          {"reverse_feature_kd": ReverseKDConfig})
