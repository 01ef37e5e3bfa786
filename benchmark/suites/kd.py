"""Suite ``kd``: distilling from logits (Hinton KD, GLD) vs from intermediate layers (FitNet, reverse feature KD).

Data: two-digit numbers, 100 classes, made of real MNIST digits (digit pools disjoint across splits): many classes
whose soft targets carry similarity, as CIFAR-100 in the papers (``data.task=digits``: the former 10-class testbed,
single tinted digits on cluttered 32-px canvases), or an ImageFolder. Teacher and student are plain conv nets of the
same widths whose depth differs (5.3× the parameters; mdistiller's resnet32x4 → resnet8x4: 6×), trained with
mdistiller's CIFAR-100 recipe. The teacher is trained once per seed and cached by config hash; every method distils
from it.
A method is a ``Distiller`` subclass in ``cvpdl/distill/`` plus one ``@REGISTRY.register`` on its ``from_config``
here (a ``KdMethod``); the claims and sections of the report live in ``kd_report``.
"""
from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from benchmark.cache import cache_key, cached_state
from benchmark.config import section_config
from benchmark.context import CellResult, RunContext
from benchmark.registry import METHOD_SECTIONS, REGISTRY, Deviation, Floor, MethodSpec, SearchParam, SuiteSpec, Sweep
from benchmark.suites.kd_report import report_sections
from cvpdl.analysis.intrinsic_dimension import intrinsic_dimension
from cvpdl.checkpoint import Checkpoint
from cvpdl.data.digits_world import GENERATOR_VERSION, POOLS, DigitsWorldConfig, load_digits_split
from cvpdl.data.imagefolder import load_imagefolder
from cvpdl.data.two_digit_numbers import GENERATOR_VERSION as NUMBERS_VERSION
from cvpdl.data.two_digit_numbers import NUM_CLASSES, TwoDigitConfig, load_two_digit_split
from cvpdl.distill.base import Distiller
from cvpdl.distill.config_checks import hint_stage_in_both_nets
from cvpdl.distill.fitnet import FitNet, FitNetConfig
from cvpdl.distill.gld import GLD, GLDConfig
from cvpdl.distill.logit_kd import LogitKD, LogitKDConfig
from cvpdl.distill.networks import ConvNet, NetConfig
from cvpdl.distill.reverse_feature_kd import ReverseFeatureKD, ReverseKDConfig
from cvpdl.distill.student_baseline import StudentBaseline
from cvpdl.distill.training import ClassificationData, KDFit, TrainConfig, predict, top1, train
from cvpdl.errors import NonFiniteLossError
from cvpdl.population import Member


@dataclass(frozen=True)
class KDWorldConfig(DigitsWorldConfig):
    canvas_size: int = 32
    min_digits: int = 1
    max_digits: int = 1
    digit_size: tuple[int, int] = (12, 26)
    clutter: float = 0.5


@dataclass(frozen=True)
class KDDataConfig:
    # 100 two-digit numbers | the former testbed: 10 single digits on cluttered canvases (section `world`)
    task: Literal["numbers", "digits"] = "numbers"
    train_images: int = 5000
    val_images: int = 1000
    test_images: int = 2000
    id_samples: int = 1000  # test embeddings per model for the intrinsic dimension
    image_size: int = 32  # ImageFolder images are resized to this


# the same widths, four conv layers per stage against one: 180,020 vs 34,196 parameters (mdistiller's
# resnet32x4 → resnet8x4: the same widths, 5 basic blocks per stage against 1, 7.4 M vs 1.2 M parameters)
@dataclass(frozen=True)
class TeacherNetConfig(NetConfig):
    widths: tuple[int, ...] = (16, 32, 64)
    blocks_per_stage: int = 4


@dataclass(frozen=True)
class StudentNetConfig(NetConfig):
    widths: tuple[int, ...] = (16, 32, 64)
    blocks_per_stage: int = 1


@dataclass
class KDShared:
    data: ClassificationData
    # per teacher (its cache key): test top-1 and embedding intrinsic dimension, measured once and read by every
    # method's cell of that seed (the teacher is frozen and measured in eval mode: the same numbers each time)
    teacher_metrics: dict[str, dict[str, float]] = field(default_factory=dict)


def _to_tensor(images: np.ndarray) -> torch.Tensor:
    return (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0 - 0.5) / 0.25


def _sizes(data_cfg: KDDataConfig) -> dict[str, int]:
    return {"train": data_cfg.train_images, "val": data_cfg.val_images, "test": data_cfg.test_images}


def prepare(run: RunContext) -> KDShared:
    data_cfg = section_config(run.cfg, "data", KDDataConfig)
    if run.data == "imagefolder":
        splits = {s: load_imagefolder(Path(run.data_root) / s, data_cfg.image_size) for s in ("train", "val", "test")}
        classes = len(splits["train"][2])
        parts = {s: (_to_tensor(x), torch.as_tensor(y)) for s, (x, y, _) in splits.items()}
    elif data_cfg.task == "numbers":
        numbers = section_config(run.cfg, "numbers", TwoDigitConfig)
        parts, classes = {}, NUM_CLASSES
        for split, n in _sizes(data_cfg).items():
            images, labels = load_two_digit_split(numbers, split, n, POOLS.index(split), run.cache_dir)
            parts[split] = (_to_tensor(images), torch.as_tensor(labels))
    else:
        world = section_config(run.cfg, "world", KDWorldConfig)
        parts, classes = {}, 10
        for split, n in _sizes(data_cfg).items():
            d = load_digits_split(world, split, n, world.seed, run.cache_dir, (1, 1))
            labels = torch.as_tensor(np.array([d.target(i)[1][0] for i in range(len(d))]))
            parts[split] = (_to_tensor(d.images), labels)
    return KDShared(ClassificationData(*parts["train"], *parts["val"], *parts["test"], num_classes=classes))


def _teacher(run: RunContext, shared: KDShared, seed: int) -> tuple[ConvNet, str]:
    """Trained once per (config, seed) and cached: every method of that seed distils from the same teacher; with
    its cache key. Built under a forked RNG, so the student starts from the runner's seeded state whether the
    teacher was trained here or loaded from the cache."""
    cfg = run.cfg
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        teacher = ConvNet(section_config(cfg, "teacher", TeacherNetConfig), shared.data.num_classes,
                          in_channels=shared.data.x_train.shape[1])
        key = cache_key(GENERATOR_VERSION, NUMBERS_VERSION, cfg["world"], cfg["numbers"], cfg["data"], cfg["teacher"],
                        cfg["teacher_train"], run.data, run.data_root, seed)
        # only the weights are kept: no per-epoch val/test pass
        cached_state(run.cache_dir / "kd_teacher" / f"teacher_{key}.pt", teacher,
                     lambda checkpoint: train(StudentBaseline(teacher), shared.data,
                                              section_config(cfg, "teacher_train", TrainConfig),
                                              torch.Generator().manual_seed(seed), desc="teacher",
                                              checkpoint=checkpoint, evaluate=False, on_epoch=run.on_epoch))
    return teacher.eval().requires_grad_(False), key


def _teacher_metrics(shared: KDShared, teacher: ConvNet, key: str, id_samples: int) -> dict[str, float]:
    """The teacher's test top-1 and the intrinsic dimension of its first ``id_samples`` test embeddings, computed at
    the first cell of its seed and reused by the others."""
    if key not in shared.teacher_metrics:
        data = shared.data
        dims = intrinsic_dimension(predict(teacher, data.x_test[:id_samples])["embedding"].numpy())
        shared.teacher_metrics[key] = {"top1": top1(teacher, data.x_test, data.y_test), **dims}
    return shared.teacher_metrics[key]


def run_population(run: RunContext, shared: KDShared, method: MethodSpec, seeds: list[int], members: list[Member]
                   ) -> list[CellResult | NonFiniteLossError]:
    """The cells of ``seeds``, member i trained from seed i's teacher, initialisation and batch order: alone for one
    seed, as one population (``cvpdl.population``) for several. A member whose loss diverged gets its error."""
    data, cfg = shared.data, run.cfg
    started = time.perf_counter()
    teachers = [_teacher(run, shared, seed) for seed in seeds]  # trained by the seed's first cell, then loaded
    teacher_seconds = (time.perf_counter() - started) / len(seeds)
    make_student = functools.partial(ConvNet, section_config(cfg, "student", StudentNetConfig), data.num_classes,
                                     in_channels=data.x_train.shape[1])
    # a distiller reads its own config's fields by name (``Distiller.fit``): its settings without their section
    members = [replace(member, settings={knob.split(".", 1)[1]: value for knob, value in member.settings.items()})
               for member in members]
    started = time.perf_counter()
    fits = REGISTRY.build(method, cfg).fit(make_student, [teacher for teacher, _ in teachers], data,
                                           section_config(cfg, "train", TrainConfig), members,
                                           Checkpoint(run.checkpoints, method.name), run.on_epoch)
    seconds = (time.perf_counter() - started) / len(seeds)  # a member's share of the population's time
    return [fit if isinstance(fit, NonFiniteLossError)
            else _cell(shared, run.cfg, fit, *teacher, teacher_seconds, seconds, len(seeds))
            for fit, teacher in zip(fits, teachers)]


def run_cell(run: RunContext, shared: KDShared, method: MethodSpec, seed: int, generator: torch.Generator
             ) -> CellResult:
    result, = run_population(run, shared, method, [seed], [Member(generator)])
    if isinstance(result, NonFiniteLossError):
        raise result
    return result


def _cell(shared: KDShared, cfg: dict, fit: KDFit, teacher: ConvNet, teacher_key: str, teacher_seconds: float,
          seconds: float, population: int) -> CellResult:
    data = shared.data
    records = [{"epoch": e + 1, "split": "val" if name == "top1" else "train", "metric": name, "value": v}
               for name, values in fit.history.per_epoch.items() for e, v in enumerate(values)]
    n = section_config(cfg, "data", KDDataConfig).id_samples
    teacher_metrics = _teacher_metrics(shared, teacher, teacher_key, n)
    final = {"top1_last": fit.history.top1_last, "top1_best": fit.history.top1_best,
             "teacher_top1": teacher_metrics["top1"],
             "student_params": float(sum(p.numel() for p in fit.student.parameters())),
             "extra_params": float(fit.extra_parameters), "chance_top1": 1.0 / data.num_classes}
    records += [{"epoch": None, "split": "test", "metric": k, "value": v} for k, v in final.items()]
    # embedding intrinsic dimension of every model a method produced; `student_alone` is reverse KD's stage-0 student
    # (CE alone, with reverse KD's own training values), so the premise "teacher ID vs a student's own ID" is testable
    models = {"teacher": teacher, "student": fit.student, "teacher_after_reverse": fit.teacher_after_reverse,
              "student_alone": fit.student_alone}
    for split, model in models.items():
        if model is None:
            continue
        dims = (teacher_metrics if model is teacher
                else intrinsic_dimension(predict(model, data.x_test[:n])["embedding"].numpy()))
        records += [{"epoch": None, "split": split, "metric": "intrinsic_dim", "value": dims["twonn"]},
                    {"epoch": None, "split": split, "metric": "intrinsic_dim_mle", "value": dims["mle"]}]
    timings = [{"epoch": None, "split": "train", "metric": "train_seconds", "value": seconds},
               {"epoch": None, "split": "train", "metric": "teacher_seconds", "value": teacher_seconds}]
    if population > 1:  # trained with others: its times are its share of the population's
        timings.append({"epoch": None, "split": "train", "metric": "population", "value": float(population)})
    return CellResult(records, timings, models={"student": fit.student})


PROFILES = {
    "quick": {"data.train_images": 800, "data.val_images": 200, "data.test_images": 300, "data.id_samples": 300,
              "train.epochs": 2, "teacher_train.epochs": 2, "reverse_feature_kd.teacher_epochs": 1},
    # 5,000 training numbers (50 per class), students 8 epochs, the teacher 10: kd's 10-minute budget at 5 seeds
    "default": {"train.epochs": 8},
    "full": {"data.train_images": 20000, "data.test_images": 5000, "train.epochs": 40, "teacher_train.epochs": 40,
             "teacher.widths": [32, 64, 128], "student.widths": [32, 64, 128],
             "reverse_feature_kd.teacher_epochs": 10},
}

@dataclass(frozen=True)
class KdMethod:
    """A kd method as ``run_cell`` trains it: a ``Distiller`` subclass and its config section (None without one)."""

    distiller: type[Distiller]
    cfg: Any = None
    population = True  # every distiller trains as a population (``run --population``)

    @classmethod
    def of(cls, distiller: type[Distiller], cfg: dict, section: str | None = None, config: type | None = None
           ) -> KdMethod:
        return cls(distiller, section_config(cfg, section, config) if config else None)

    def fit(self, *args, **kwargs) -> list[KDFit | NonFiniteLossError]:
        """``Distiller.fit`` (make_student, teachers, data, train config, members, checkpoint, on_epoch)."""
        return self.distiller.fit(self.cfg, *args, **kwargs)


REGISTRY.register_suite(SuiteSpec(
    name="kd",
    question="Distilling from logits (Hinton KD, GLD) vs from intermediate layers (FitNet, reverse feature KD)",
    dataset="two-digit numbers (100 classes, MNIST digits side by side, 16×32 px), or an ImageFolder",
    datasets=("digits", "imagefolder"),
    config={"world": KDWorldConfig, "numbers": TwoDigitConfig, "data": KDDataConfig, "teacher": TeacherNetConfig,
            "student": StudentNetConfig, "teacher_train": TrainConfig, "train": TrainConfig},
    profiles=PROFILES,
    prepare=prepare,
    run_cell=run_cell,
    run_population=run_population,
    baseline="student_baseline",
    headline=(("top1_last", "test"), ("top1_best", "test"), ("teacher_top1", "test")),
    report_sections=report_sections,
    tuning_objective=("top1", "val"),
    floors=(Floor("top1_last", "test", ("chance_top1", "test")),),
    # the knobs carried over from CIFAR-100 ResNets: mdistiller's hint weight (it also drives reverse KD − FitNet,
    # a comparison against FitNet) and GLD's official relation weight β (`loss_share_*` shows what each term weighs)
    sweeps=(
        Sweep("fitnet:student", "fitnet.hint_weight", (1.0, 10.0, 100.0), ("fitnet",)),
        Sweep("reverse:fitnet", "fitnet.hint_weight", (1.0, 10.0, 100.0), ("fitnet",)),
        Sweep("gld:logit_kd", "gld.beta", (50.0, 500.0), ("gld",)),
    ),
    method_type=KdMethod,
    member_settings=(METHOD_SECTIONS,),  # a distiller's loss weights and temperatures
))


# one tuning space for every method: the student's learning rate and weight decay (around mdistiller's 0.05 and
# 5e-4), plus each method's own loss knobs; the baseline gets no knob the distillers lack
OPTIMIZER_SPACE = (SearchParam("train.lr", 0.0125, 0.2, log=True),
                   SearchParam("train.weight_decay", 5e-5, 5e-3, log=True))


GLD_DEVIATIONS = (
    Deviation(what="local logits go through the whole head (Linear → BatchNorm1d → classifier); the BatchNorm1d "
                   "normalises region rows with the whole-image batch statistics of the same step and its running "
                   "statistics see whole images only",
              why="the official ResNet head is a single Linear after pooling, so regions need no normalisation; this "
                  "net's head has a BatchNorm1d, and batch statistics over region rows would mix two distributions"),
    Deviation(what="logits are standardised as (z − row mean) / (row std + 1e-7) instead of z / row std (official "
                   "`mean_var_norm`)",
              why="the row mean cancels in the softmax; the 1e-7 keeps a constant row finite (the official division "
                  "gives inf there) and moves the loss by about 1e-7 of its value (tested against the official "
                  "code, forward and backward)"),
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
    Deviation(what="the stage-2 student classifies with the stage-1 teacher's classifier, copied and frozen",
              why="the paper's task, face recognition, has no classifier at test time (identities are matched by "
                  "embedding); top-1 here needs one, and a feature-only student has no label signal to train its "
                  "own, while its embedding is trained to live in the teacher's space"),
)

# registry order is the order of tables, figures and claims
@REGISTRY.register("kd", "student_baseline", paper="the student trained alone with cross-entropy",
                   search_space=OPTIMIZER_SPACE)
def student_baseline(cfg: dict) -> KdMethod:
    return KdMethod.of(StudentBaseline, cfg)


@REGISTRY.register("kd", "logit_kd", paper="Hinton, Vinyals, Dean, Distilling the Knowledge in a Neural Network, 2015",
                   config={"logit_kd": LogitKDConfig},
                   search_space=(*OPTIMIZER_SPACE, SearchParam("logit_kd.temperature", 1.0, 8.0),
                                 SearchParam("logit_kd.kd_weight", 0.1, 0.95)))
def logit_kd(cfg: dict) -> KdMethod:
    return KdMethod.of(LogitKD, cfg, "logit_kd", LogitKDConfig)


@REGISTRY.register("kd", "gld", paper="Kim et al., Distilling Global and Local Logits with Densely Connected "
                                      "Relations, ICCV 2021",
                   config={"gld": GLDConfig}, deviations=GLD_DEVIATIONS,
                   search_space=(*OPTIMIZER_SPACE, SearchParam("gld.alpha", 0.1, 0.95),
                                 SearchParam("gld.beta", 10.0, 5000.0, log=True)))
def gld(cfg: dict) -> KdMethod:
    return KdMethod.of(GLD, cfg, "gld", GLDConfig)


@REGISTRY.register("kd", "fitnet", paper="Romero et al., FitNets: Hints for Thin Deep Nets, ICLR 2015",
                   config={"fitnet": FitNetConfig}, checks=(hint_stage_in_both_nets,),
                   search_space=(*OPTIMIZER_SPACE, SearchParam("fitnet.hint_weight", 1.0, 300.0, log=True),
                                 SearchParam("fitnet.hint_stage", choices=(0, 1, 2))))
def fitnet(cfg: dict) -> KdMethod:
    return KdMethod.of(FitNet, cfg, "fitnet", FitNetConfig)


@REGISTRY.register("kd", "reverse_feature_kd",
                   paper="Li et al., Rethinking Feature-based Knowledge Distillation for Face Recognition, CVPR 2023",
                   config={"reverse_feature_kd": ReverseKDConfig}, deviations=REVERSE_KD_DEVIATIONS,
                   search_space=(*OPTIMIZER_SPACE,
                                 SearchParam("reverse_feature_kd.reverse_weight", 0.1, 10.0, log=True),
                                 SearchParam("reverse_feature_kd.feature_weight", 0.1, 10.0, log=True)))
def reverse_feature_kd(cfg: dict) -> KdMethod:
    return KdMethod.of(ReverseFeatureKD, cfg, "reverse_feature_kd", ReverseKDConfig)
