"""Suite ``ovd``: detecting novel objects — CLIP on crops vs CLIP with RoIAlign vs RegionCLIP.

Shared by every cell (and cached on disk by config hash, like downloaded weights): the digits world, the CLIP
(trained here on the caption corpus, or a local open_clip checkpoint) and the class-agnostic localizer trained
on base boxes. A cell (method, seed) draws its own test canvases from the held-out test pool with its seed, fits
the method (RegionCLIP pretraining; nothing for the zero-shot baselines) and runs the common evaluation. What the
numbers say (claims, report sections, verdicts) is ``ovd_report``.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from typing import Literal
from pathlib import Path

import numpy as np
import torch

from benchmark.cache import cache_key, cached_state
from benchmark.config import section_config, with_values
from benchmark.context import CellResult, RunContext
from benchmark.registry import REGISTRY, Floor, Deviation, MethodSpec, SearchParam, SuiteSpec, Sweep
from benchmark.suites.ovd_report import report_sections
from cvpdl.checkpoint import Checkpoint
from cvpdl.data.coco import OV_COCO_NOVEL, load_coco_splits, resolve_splits
from cvpdl.data.detection_split import DetectionSplit
from cvpdl.data.digits_world import GENERATOR_VERSION, DigitsWorldConfig, load_digits_split
from cvpdl.errors import NonFiniteLossError, UserInputError
from cvpdl.ovd.clip_crop import ClipCrop
from cvpdl.ovd.clip_model import ClipEncoder, TinyClipConfig, build_tiny_clip, load_pretrained_clip
from cvpdl.ovd.clip_roi import ClipRoi
from cvpdl.ovd.localizer import LocalizerConfig, build_localizer, propose, train_localizer
from cvpdl.ovd.protocol import OvdEvalConfig, evaluate_ovd, gt_box_top1
from cvpdl.ovd.region_classifier import OvdContext, RegionClassifier
from cvpdl.ovd.regionclip import MEMBER_FIELDS, RegionClip, RegionClipConfig
from cvpdl.ovd.tiny_clip_training import train_clip
from cvpdl.population import Member

log = logging.getLogger("benchmark")


@dataclass(frozen=True)
class OvdDataConfig:
    train_images: int = 4000
    test_images: int = 500
    val_images: int = 200  # val-pool canvases: the tuning objective (zero-shot top-1 on their boxes)
    single_images: int = 500  # single-digit test canvases for whole-image zero-shot (Fig. 1(b))
    # COCO split names; "" = discovered from ROOT/annotations/instances_<split>.json (no test split: val is test)
    coco_train_split: str = ""
    coco_val_split: str = ""
    coco_test_split: str = ""
    coco_image_size: int = 224  # real images are resized to this square input
    coco_novel_classes: tuple[str, ...] = OV_COCO_NOVEL  # the open-vocabulary novel categories (names)
    # the tiny CLIP's own corpus (digits world): "multiscale" canvases from the training pool, like web images with
    # objects at many scales and positions, or "train" (the localizer's training canvases, digit_size only)
    clip_corpus: Literal["multiscale", "train"] = "multiscale"
    clip_digit_scale: tuple[float, float] = (0.15, 0.6)  # digit side / canvas side, 1–max_digits digits
    clip_large_scale: tuple[float, float] = (0.6, 1.0)  # ... on the canvases holding one large digit
    clip_large_fraction: float = 0.25  # share of the corpus with one large digit


@dataclass(frozen=True)
class ClipRoiConfig:
    image_scale: float = 2.0  # whole image fed at this multiple of CLIP's input size


@dataclass
class OvdShared:
    context: OvdContext
    localizer: torch.nn.Module
    artifacts: dict[Path, bool] = field(default_factory=dict)  # cached weights: trained by this run (or loaded)
    coco: dict[str, DetectionSplit] | None = None  # train/val/test of a COCO-format dataset (None: digits world)


def _digits_split(run: RunContext, split: str, n: int, seed: int) -> DetectionSplit:
    world = section_config(run.cfg, "world", DigitsWorldConfig)
    digits_range = (1, 1) if split == "test_single" else None
    return load_digits_split(world, split, n, seed, run.cache_dir, digits_range)


def _coco_splits(run: RunContext, data: OvdDataConfig) -> dict[str, DetectionSplit]:
    """train/val/test of a COCO-format dataset, every file and the novel list checked before anything trains."""
    names = resolve_splits(run.data_root, data.coco_train_split, data.coco_val_split, data.coco_test_split)
    if names.test_is_val:
        log.warning(f"{run.data_root} has no annotated test split: {names.val} is both val and test")
    splits = load_coco_splits(run.data_root, names, data.coco_image_size,
                              {"train": data.train_images, "val": data.val_images, "test": data.test_images},
                              tuple(data.coco_novel_classes))
    if not splits["train"].captions:
        raise UserInputError(f"{run.data_root}/annotations/captions_{names.train}.json is needed: RegionCLIP's "
                             "concept pool comes from captions")
    return splits


def _clip_corpus(run: RunContext, train: DetectionSplit) -> tuple[np.ndarray, list[str]]:
    """Images and captions the tiny CLIP trains on: as many canvases as the training split, drawn from the same
    digit pool with another seed, with digits of many sizes and a share of canvases holding one large digit."""
    data = section_config(run.cfg, "data", OvdDataConfig)
    if run.data != "digits" or data.clip_corpus == "train":
        return train.images, train.captions
    world = section_config(run.cfg, "world", DigitsWorldConfig)
    side = world.canvas_size

    def sizes(scale: tuple[float, float]) -> tuple[int, int]:
        return max(4, round(scale[0] * side)), round(scale[1] * side)

    n_large = round(data.clip_large_fraction * data.train_images)
    many = load_digits_split(replace(world, digit_size=sizes(data.clip_digit_scale)), "train",
                             data.train_images - n_large, world.seed + 1, run.cache_dir)
    large = load_digits_split(replace(world, digit_size=sizes(data.clip_large_scale)), "train", n_large,
                              world.seed + 1, run.cache_dir, (1, 1))
    return np.concatenate([many.images, large.images]), list(many.captions) + list(large.captions)


def _check_clip_corpus(data: OvdDataConfig) -> None:
    for name in ("clip_digit_scale", "clip_large_scale"):
        low, high = getattr(data, name)
        if not 0 < low <= high <= 1:
            raise UserInputError(f"data.{name} must satisfy 0 < low <= high <= 1; got {[low, high]}")
    if not 0 <= data.clip_large_fraction <= 1:
        raise UserInputError(f"data.clip_large_fraction must lie in [0, 1]; got {data.clip_large_fraction}")


def prepare(run: RunContext) -> OvdShared:
    """The data, CLIP and localizer every cell shares. They are seeded here, not by the runner (which seeds cells):
    their initial weights come from torch's global generator, seeded with the artefact's own config seed, which
    its cache key covers, so the weights do not depend on which cell prepares them or on what is cached."""
    cfg, device = run.cfg, run.device
    data = section_config(cfg, "data", OvdDataConfig)
    _check_clip_corpus(data)
    coco = _coco_splits(run, data) if run.data == "coco" else None
    train = coco["train"] if coco else _digits_split(run, "train", data.train_images,
                                                     section_config(cfg, "world", DigitsWorldConfig).seed)
    data_key = [GENERATOR_VERSION, cfg["world"], cfg["data"], run.data, run.data_root]
    artifacts = {}
    if run.clip:
        encoder = ClipEncoder(load_pretrained_clip(run.clip, run.clip_weights).to(device).eval())
    else:
        clip_cfg = section_config(cfg, "clip", TinyClipConfig)
        torch.manual_seed(clip_cfg.seed)
        encoder = ClipEncoder(build_tiny_clip(clip_cfg), clip_cfg.context_length)
        clip_path = run.cache_dir / "clip" / f"tiny_clip_{cache_key(data_key, cfg['clip'])}.pt"

        def fit_clip(checkpoint: Checkpoint) -> None:
            encoder.model.to(device)
            images, captions = _clip_corpus(run, train)
            train_clip(encoder, images, captions, clip_cfg, torch.Generator().manual_seed(clip_cfg.seed), run.on_epoch,
                       checkpoint)

        artifacts[clip_path] = cached_state(clip_path, encoder.model, fit_clip)
        encoder.model.to(device).eval()
    for p in encoder.model.parameters():
        p.requires_grad_(False)

    loc_cfg = section_config(cfg, "localizer", LocalizerConfig)
    torch.manual_seed(loc_cfg.seed)
    localizer = build_localizer(loc_cfg, train.image(0).shape[0])
    loc_path = run.cache_dir / "localizer" / f"fcos_{cache_key(data_key, cfg['localizer'])}.pt"

    def fit_localizer(checkpoint: Checkpoint) -> None:
        localizer.to(device)
        train_localizer(localizer, train, loc_cfg, torch.Generator().manual_seed(loc_cfg.seed), train.base_classes,
                        run.on_epoch, checkpoint)

    artifacts[loc_path] = cached_state(loc_path, localizer, fit_localizer)
    localizer.to(device).eval()
    context = OvdContext(encoder, train, localizer, list(train.class_names))
    return OvdShared(context, localizer, artifacts, coco)


def run_cell(run: RunContext, shared: OvdShared, method: MethodSpec, seed: int, generator: torch.Generator
             ) -> CellResult:
    result, = run_population(run, shared, method, [seed], [Member(generator)])
    if isinstance(result, NonFiniteLossError):
        raise result
    return result


def run_population(run: RunContext, shared: OvdShared, method: MethodSpec, seeds: list[int], members: list[Member]
                   ) -> list[CellResult | NonFiniteLossError]:
    """The cells of ``seeds``: member i fitted with seed i's generator and its own settings (``Member.settings``:
    the ``regionclip`` section's floats), as one population where the method trains batched
    (``RegionClip.fit_population``; one member is ``fit`` alone), then each evaluated alone. A member whose loss
    diverged gets its error."""
    runs = [replace(run, cfg=with_values(run.cfg, member.settings)) for member in members]
    classifiers: list[RegionClassifier] = [REGISTRY.build(method, own.cfg) for own in runs]
    started = time.perf_counter()
    checkpoint = Checkpoint(run.checkpoints, method.name)
    histories = type(classifiers[0]).fit_population(classifiers, shared.context, members, checkpoint, run.on_epoch)
    seconds = (time.perf_counter() - started) / len(seeds)  # a member's share of the population's time
    return [history if isinstance(history, NonFiniteLossError)
            else _cell(own, shared, classifier, seed, member.generator, history, seconds, len(seeds))
            for own, classifier, seed, member, history in zip(runs, classifiers, seeds, members, histories)]


def _cell(run: RunContext, shared: OvdShared, classifier: RegionClassifier, seed: int, generator: torch.Generator,
          history: dict[str, list[float]], train_seconds: float, population: int) -> CellResult:
    data = section_config(run.cfg, "data", OvdDataConfig)
    test = shared.coco["test"] if shared.coco else _digits_split(run, "test", data.test_images, seed)
    single = None if shared.coco else _digits_split(run, "test_single", data.single_images, seed)
    started = time.perf_counter()
    records = [{"epoch": epoch + 1, "split": "train", "metric": name, "value": value}
               for name, values in history.items() for epoch, value in enumerate(values)]
    # RegionCLIP's pseudo-label diagnostics (its own positive control: the student learned its teacher's labels)
    records += [{"epoch": None, "split": "train", "metric": name, "value": value}
                for name, value in getattr(classifier, "diagnostics", {}).items()]
    result = evaluate_ovd(classifier, shared.context, test, single or _single_objects(test),
                          propose(shared.localizer, test), section_config(run.cfg, "eval", OvdEvalConfig), generator)
    records += [{"epoch": None, "split": s, "metric": m, "value": v} for s, m, v in result.metrics]
    # the validation number `benchmark tune` maximises (the val digit pool or COCO's val split, never test)
    val = shared.coco["val"] if shared.coco else _digits_split(run, "val", data.val_images, seed)
    records.append({"epoch": None, "split": "val", "metric": "zs_top1",
                    "value": gt_box_top1(classifier, shared.context, val)["all"]})
    eval_seconds = time.perf_counter() - started
    # chance level and model sizes, so that the report quotes them from metrics.csv
    records.append({"epoch": None, "split": "all", "metric": "chance_top1",
                    "value": 1.0 / len(shared.context.class_names)})
    records += [{"epoch": None, "split": part, "metric": "params",
                 "value": float(sum(p.numel() for p in m.parameters()))}
                for part, m in (("clip", shared.context.clip.model), ("localizer", shared.localizer))]
    timings = [{"epoch": None, "split": s, "metric": m, "value": v} for s, m, v in result.timings]
    # wall clock of the cell's two parts, for perf's account of where a suite's time goes
    timings += [{"epoch": None, "split": "train", "metric": "train_seconds", "value": train_seconds},
                {"epoch": None, "split": "test", "metric": "eval_seconds", "value": eval_seconds}]
    if population > 1:  # trained with others: its train time is its share of the population's
        timings.append({"epoch": None, "split": "train", "metric": "population", "value": float(population)})
    encoder = classifier.encoder(shared.context)  # a method that trains its own encoder (RegionCLIP) keeps it
    models = {} if encoder is shared.context.clip else {"visual_encoder": encoder.model}
    return CellResult(records, timings, {"score_vs_iou": result.scatter}, models=models)


def _single_objects(split: DetectionSplit) -> DetectionSplit:
    """Real data has no single-object canvases: use its images that hold exactly one object."""
    return split.subset([i for i in range(len(split)) if len(split.target(i)[1]) == 1])


PROFILES = {
    "quick": {"data.train_images": 1500, "data.test_images": 40, "data.val_images": 40, "data.single_images": 80,
              "clip.epochs": 8, "clip.batch_size": 128, "clip.lr": 1e-3, "localizer.epochs": 1,
              "regionclip.images": 128, "eval.scatter_points": 200},
    "default": {},
    "full": {"world.canvas_size": 128, "world.digit_size": [24, 48], "world.max_digits": 5, "clip.image_size": 128,
             "clip.vision_width": 64, "clip.embed_dim": 256, "clip.text_width": 256, "clip.epochs": 40,
             "data.train_images": 3000, "data.test_images": 1000, "data.single_images": 1000,
             "localizer.epochs": 12, "regionclip.epochs": 3},
}

SUITE = REGISTRY.register_suite(SuiteSpec(
    name="ovd",
    question="Why does locating, then classifying crops zero-shot with CLIP work poorly, and does RegionCLIP's "
             "region-text pretraining fix it? (RegionCLIP, Zhong et al., CVPR 2022, Fig. 1 and Tables 1/4)",
    dataset="digits world (MNIST canvases + captions; novel digits two, five, eight) or COCO with OV-COCO 48/17",
    datasets=("digits", "coco"),
    config={"world": DigitsWorldConfig, "data": OvdDataConfig, "clip": TinyClipConfig, "localizer": LocalizerConfig,
            "eval": OvdEvalConfig},
    profiles=PROFILES,
    prepare=prepare,
    run_cell=run_cell,
    run_population=run_population,
    member_settings=tuple(f"regionclip.{key}" for key in MEMBER_FIELDS),  # what RegionClip.fit_population batches
    baseline="clip_crop",
    headline=(("zs_top1", "base"), ("zs_top1", "novel"), ("zs_top1_image", "all"), ("AP50", "novel"),
              ("AP50", "base"), ("score_iou_spearman", "all")),
    report_sections=report_sections,
    tuning_objective=("zs_top1", "val"),
    floors=(Floor("zs_top1", "all", ("chance_top1", "all")),),  # a region classifier at chance is no baseline
    # RegionCLIP's matching temperature: the official 0.01 is set for OpenAI CLIP's logit scale (1/100); 0.07 is
    # open_clip's initial temperature, the scale this tiny CLIP starts from
    sweeps=tuple(Sweep(f"regionclip:clip_roi:{metric}:{split}", "regionclip.temperature", (0.01, 0.07), ("regionclip",))
                 for metric, split in (("zs_top1", "novel"), ("zs_top1", "base"), ("AP50", "novel"),
                                       ("AP50", "base"))),
    method_type=RegionClassifier,
))


@REGISTRY.register("ovd", "clip_crop",
                   paper="Radford et al., ICML 2021 (CLIP), applied to pixel crops as in RegionCLIP Fig. 1")
def clip_crop(cfg: dict) -> ClipCrop:
    return ClipCrop()


@REGISTRY.register("ovd", "clip_roi", config={"clip_roi": ClipRoiConfig},
                   paper="CLIP with RoIAlign region features (RegionCLIP's region encoder without pretraining), "
                         "Zhong et al. 2022")
def clip_roi(cfg: dict) -> ClipRoi:
    return ClipRoi(section_config(cfg, "clip_roi", ClipRoiConfig).image_scale)


@REGISTRY.register(
    "ovd", "regionclip", paper="Zhong et al., RegionCLIP: Region-based Language-Image Pretraining, CVPR 2022",
    config={"regionclip": RegionClipConfig},
    # weight decay stays at the official 1e-4, untuned: AdamW's decay over 47 steps at lr 1e-4 shrinks a weight by
    # ~5e-7 of itself, and a config field for it would change the pre-registered plan's config hash
    search_space=(SearchParam("regionclip.lr", 3e-5, 1e-3, log=True),
                  SearchParam("regionclip.temperature", 0.005, 0.1, log=True),
                  SearchParam("regionclip.keep_threshold", 0.05, 0.5)),
    deviations=(
        Deviation(what="each region's pseudo-label is chosen among the concepts of its own image's caption "
                       "(official: argmax over the whole concept pool)",
                  why="the tiny teacher CLIP's region scores are weak (its whole-pool labels were not measured "
                      "here); the caption restriction is the only label-noise filter this world allows",
                  restore="--set regionclip.label_pool=all"),
        Deviation(what="image–text loss: equal captions in a batch are positives (official: the diagonal only)",
                  why="digits-world captions repeat (\"a photo of a three\" many times per batch), web captions "
                      "do not; as negatives they would push identical image contents apart",
                  restore="--set regionclip.caption_duplicates=negative"),
        Deviation(what="proposal pool of 18 class-agnostic FCOS boxes per image (NMS 0.5), 6 drawn per iteration "
                       "(official: 300 RPN proposals, 100 drawn)",
                  why="a 64-px canvas holds 1-4 digits and the stride-8 localizer has 64 locations; the 1:3 ratio "
                      "is kept"),
        Deviation(what="AdamW (lr 1e-4 by default), cosine, 1 epoch over 1,500 training canvases at one input scale "
                       "(2x) (official: SGD lr 0.002, 600k iterations of 96 images, multi-scale 640-800 px); the "
                       "learning rate, temperature and keep threshold are tuned per study (official: 0.01 and 0.1, "
                       "the defaults here, which `--params none` restores)",
                  why="CPU budget of the benchmark, and the same tuning budget as every other method; the loss "
                      "definitions, FREEZE_AT 2, FrozenBN, the teacher's fixed s_temp 0.01 (not tuned: "
                      "regionclip.teacher_temperature) and gradient clipping at norm 5 are the official ones"),
        Deviation(what="concept pool: the class names that the training captions name (official: 4,764 nouns "
                       "parsed from COCO Captions, coco_nouns_4764.txt, not shipped with the official code)",
                  why="the digits world's captions name only its ten class names; on --data coco the official "
                      "noun list is a download this benchmark does not make",
                  restore="--set regionclip.concept_list=coco_nouns_4764.txt"),
    ))
def regionclip(cfg: dict) -> RegionClip:
    return RegionClip(section_config(cfg, "regionclip", RegionClipConfig))
