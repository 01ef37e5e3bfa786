"""Suite ``ovd``: detecting novel objects — CLIP on crops vs CLIP with RoIAlign vs RegionCLIP.

Shared by every cell (and cached on disk by config hash, like downloaded weights): the digits world, the CLIP
(trained here on the caption corpus, or a local open_clip checkpoint) and the class-agnostic localizer trained
on base boxes. A cell (method, seed) draws its own test canvases from the held-out test pool with its seed, fits
the method (RegionCLIP pretraining; nothing for the zero-shot baselines) and runs the common evaluation.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch

from benchmark.cache import cache_key, cached_state
from benchmark.config import section_config
from benchmark.registry import REGISTRY, MethodSpec, Section, SuiteSpec
from benchmark.report import cell, describe, direction, paired_comparison, paired_verdict, summary_rows
from benchmark.runner import CellResult, RunContext
from cvpdl.checkpoint import Checkpoint
from cvpdl.data.coco import load_coco_split
from cvpdl.data.detection_split import DetectionSplit, resized
from cvpdl.data.digits_world import GENERATOR_VERSION, DigitsWorldConfig, load_digits_split
from cvpdl.errors import UserInputError
from cvpdl.ovd.clip_crop import ClipCrop
from cvpdl.ovd.clip_model import ClipEncoder, TinyClipConfig, build_tiny_clip, load_pretrained_clip
from cvpdl.ovd.clip_roi import ClipRoi
from cvpdl.ovd.localizer import LocalizerConfig, build_localizer, propose, train_localizer
from cvpdl.ovd.protocol import OvdEvalConfig, evaluate_ovd
from cvpdl.ovd.region_classifier import OvdContext
from cvpdl.ovd.regionclip import RegionClip, RegionClipConfig
from cvpdl.ovd.tiny_clip_training import train_clip

METHODS = ("clip_crop", "clip_roi", "regionclip")


@dataclass(frozen=True)
class OvdDataConfig:
    train_images: int = 4000
    test_images: int = 500
    single_images: int = 500  # single-digit test canvases for whole-image zero-shot (Fig. 1(b))
    coco_train_split: str = "train2017"
    coco_test_split: str = "val2017"
    coco_image_size: int = 224  # real images are resized to this square input


@dataclass(frozen=True)
class ClipRoiConfig:
    image_scale: float = 2.0  # whole image fed at this multiple of CLIP's input size


@dataclass
class OvdShared:
    context: OvdContext
    localizer: torch.nn.Module
    artifacts: list[Path] = field(default_factory=list)


def _load_split(run: RunContext, split: str, n: int, seed: int) -> DetectionSplit:
    data = section_config(run.cfg, "data", OvdDataConfig)
    if run.data == "coco":
        name = data.coco_train_split if split == "train" else data.coco_test_split
        real = load_coco_split(run.data_root, name)
        if split != "train" and not real.novel_cat_ids:
            raise UserInputError(f"{name}: none of the OV-COCO novel category names occur in its categories")
        return resized(real, data.coco_image_size)
    world = section_config(run.cfg, "world", DigitsWorldConfig)
    digits_range = (1, 1) if split == "test_single" else None
    return load_digits_split(world, split, n, seed, run.cache_dir, digits_range)


def prepare(run: RunContext) -> OvdShared:
    cfg, device = run.cfg, run.device
    data = section_config(cfg, "data", OvdDataConfig)
    train = _load_split(run, "train", data.train_images, section_config(cfg, "world", DigitsWorldConfig).seed)
    if run.data == "coco" and not train.captions:
        raise UserInputError(f"{run.data_root}/annotations/captions_{data.coco_train_split}.json is needed: "
                             "RegionCLIP's concept pool comes from captions")
    data_key = [GENERATOR_VERSION, cfg["world"], cfg["data"], run.data, run.data_root]
    artifacts = []
    if run.clip:
        encoder = ClipEncoder(load_pretrained_clip(run.clip, run.clip_weights).to(device).eval())
    else:
        clip_cfg = section_config(cfg, "clip", TinyClipConfig)
        torch.manual_seed(clip_cfg.seed)  # initial weights: part of what the cache key stands for
        encoder = ClipEncoder(build_tiny_clip(clip_cfg), clip_cfg.context_length)
        clip_path = run.cache_dir / "clip" / f"tiny_clip_{cache_key(data_key, cfg['clip'])}.pt"

        def fit_clip():
            encoder.model.to(device)
            train_clip(encoder, train.images, train.captions, clip_cfg, torch.Generator().manual_seed(clip_cfg.seed))

        cached_state(clip_path, encoder.model, fit_clip)
        encoder.model.to(device).eval()
        artifacts.append(clip_path)
    for p in encoder.model.parameters():
        p.requires_grad_(False)

    loc_cfg = section_config(cfg, "localizer", LocalizerConfig)
    torch.manual_seed(loc_cfg.seed)
    localizer = build_localizer(loc_cfg, train.image(0).shape[0])
    loc_path = run.cache_dir / "localizer" / f"fcos_{cache_key(data_key, cfg['localizer'])}.pt"

    def fit_localizer():
        localizer.to(device)
        train_localizer(localizer, train, loc_cfg, torch.Generator().manual_seed(loc_cfg.seed), train.base_classes)

    cached_state(loc_path, localizer, fit_localizer)
    localizer.to(device).eval()
    artifacts.append(loc_path)
    context = OvdContext(encoder, train, propose(localizer, train), list(train.class_names))
    return OvdShared(context, localizer, artifacts)


def run_cell(run: RunContext, shared: OvdShared, method: MethodSpec, seed: int, generator: torch.Generator
             ) -> CellResult:
    data = section_config(run.cfg, "data", OvdDataConfig)
    test = _load_split(run, "test", data.test_images, seed)
    single = _load_split(run, "test_single", data.single_images, seed) if run.data == "digits" else None
    classifier = method.build(run.cfg)
    history = classifier.fit(shared.context, generator, Checkpoint(run.checkpoints, method.name))
    records = [{"epoch": epoch + 1, "split": "train", "metric": name, "value": value}
               for name, values in history.items() for epoch, value in enumerate(values)]
    result = evaluate_ovd(classifier, shared.context, test, single or _single_objects(test),
                          propose(shared.localizer, test), section_config(run.cfg, "eval", OvdEvalConfig), generator)
    records += [{"epoch": None, "split": s, "metric": m, "value": v} for s, m, v in result.metrics]
    timings = [{"epoch": None, "split": s, "metric": m, "value": v} for s, m, v in result.timings]
    return CellResult(records, timings, {"score_vs_iou": result.scatter})


def _single_objects(split: DetectionSplit) -> DetectionSplit:
    """Real data has no single-object canvases: use its images that hold exactly one object."""
    return split.subset([i for i in range(len(split)) if len(split.target(i)[1]) == 1])


def _clip_verdict(r) -> str:
    if r is None:
        return ""
    if r["ci_low"] > 0.1:
        return "Yes: the contrastively trained CLIP classifies whole images zero-shot far above chance."
    return "No: the CLIP is not clearly above chance, so the region results below mean little."


def _rho_verdict(rows: pd.DataFrame, methods: list[str]) -> str:
    rhos = {m: cell(rows, m, "score_iou_spearman", "all") for m in methods}
    weak = [m for m, r in rhos.items() if r is not None and abs(r["mean"]) < 0.3]
    if len(weak) == len(rhos):
        return "Yes: |ρ| < 0.3 for every method; a region's score says almost nothing about its IoU."
    return f"Partly: ρ is weak (|ρ| < 0.3) only for {', '.join(weak) or 'none'}."


def _crop_verdict(frame: pd.DataFrame, timings: pd.DataFrame | None) -> str:
    side = direction(paired_comparison(frame, "clip_crop", "clip_crop", "zs_top1", "all", "zs_top1_image"))
    text = ("Yes: crop accuracy is below whole-image accuracy (the interval of the paired difference is below 0)."
            if side == "lower" else f"No: crop − image is {side}.")
    if timings is not None and not timings.empty:
        t = summary_rows(timings)
        crop, roi = cell(t, "clip_crop", "seconds_per_image", "all"), cell(t, "clip_roi", "seconds_per_image", "all")
        if crop is not None and roi is not None:
            text += (f" Cost: cropping every proposal took {crop['mean'] / roi['mean']:.1f}× the time of one "
                     f"RoIAlign pass per image here (a tiny 64-px CLIP, about 10 proposals per image).")
    return text


def _regionclip_verdict(frame: pd.DataFrame, methods: set[str]) -> str:
    if "regionclip" not in methods:
        return ""
    sides = [direction(paired_comparison(frame, "regionclip", b, metric, split))
             for b in ("clip_crop", "clip_roi") if b in methods for metric in ("zs_top1", "AP50")
             for split in ("novel", "base")]
    higher = sides.count("higher")
    if higher == len(sides):
        return "Yes: RegionCLIP is higher in every comparison, on novel and base classes alike."
    return (f"Partly: RegionCLIP is significantly higher in {higher} of {len(sides)} comparisons, "
            f"{sides.count('lower')} lower, the rest not significant at this number of seeds.")


def report_sections(frame: pd.DataFrame, timings: pd.DataFrame | None) -> list[Section]:
    rows = summary_rows(frame)
    methods = set(frame["method"])
    first = sorted(methods)[0]
    sections = [Section(
        "C1. CLIP: training and zero-shot inference",
        "CLIP trains an image and a text encoder contrastively on image-caption pairs: the N matching pairs on the "
        "diagonal of the N×N similarity matrix are pulled up, all others pushed down. Zero-shot classification embeds "
        "one prompt per class name and picks the class whose prompt is most similar to the image.",
        [f"The harness's tiny CLIP (trained here on 4,000 captioned canvases; duplicate captions are positives) "
         f"classifies whole single-digit test canvases zero-shot with top-1 "
         f"{describe(rows, first, 'clip_zs_top1_image', 'all')} (chance 0.100); base "
         f"{describe(rows, first, 'clip_zs_top1_image', 'base')}, novel "
         f"{describe(rows, first, 'clip_zs_top1_image', 'novel')}."],
        ["fig1b_crop_vs_image"], _clip_verdict(cell(rows, first, "clip_zs_top1_image", "all")))]
    measured = [f"`{m}`: Spearman ρ between a proposal's zero-shot score and its IoU with the best ground truth "
                f"{describe(rows, m, 'score_iou_spearman', 'all')}." for m in METHODS if m in methods]
    sections.append(Section(
        "C2a. CLIP's region scores do not reflect localization quality (RegionCLIP Fig. 1(a))",
        "RegionCLIP observes that CLIP's score of a proposal is nearly unrelated to how well the proposal covers the "
        "object, so a detector cannot rank its boxes with it.", measured, ["fig1a_score_vs_iou"],
        _rho_verdict(rows, [m for m in METHODS if m in methods])))
    measured = []
    if "clip_crop" in methods:
        measured.append(f"`clip_crop` on ground-truth crops {describe(rows, 'clip_crop', 'zs_top1', 'all')} vs the "
                        f"same CLIP on whole single-digit images {describe(rows, 'clip_crop', 'zs_top1_image', 'all')}:"
                        " crop − image "
                        f"{paired_verdict(frame, 'clip_crop', 'clip_crop', 'zs_top1', 'all', 'zs_top1_image')}.")
    if "clip_roi" in methods:
        measured.append(f"`clip_roi` (RoIAlign on the whole-image feature map) on the same boxes "
                        f"{describe(rows, 'clip_roi', 'zs_top1', 'all')}; vs `clip_crop` "
                        f"{paired_verdict(frame, 'clip_roi', 'clip_crop', 'zs_top1', 'all')}.")
    if timings is not None and not timings.empty:
        t = summary_rows(timings)
        cost = [f"`{m}` {cell(t, m, 'seconds_per_image', 'all')['mean'] * 1000:.1f} ms"
                for m in METHODS if cell(t, m, 'seconds_per_image', 'all') is not None]
        measured.append("Cost of classifying the localizer's proposals, per image (wall clock, same run): "
                        + ", ".join(cost) + ".")
    sections.append(Section(
        "C2b. Classifying crops works poorly (RegionCLIP Fig. 1(b), Table 4)",
        "Even on ground-truth boxes, CLIP classifies cropped regions far worse than whole images: it learned whole "
        "images with their context, and a crop removes the context and changes the scale. Cropping every proposal "
        "and running CLIP on each is also expensive.", measured, ["fig1b_crop_vs_image"],
        _crop_verdict(frame, timings) if "clip_crop" in methods else ""))
    measured = []
    if "regionclip" in methods:
        for baseline in ("clip_crop", "clip_roi"):
            if baseline in methods:
                measured += [f"`regionclip` vs `{baseline}`, {metric} on {split} classes: "
                             f"{paired_verdict(frame, 'regionclip', baseline, metric, split)}."
                             for metric in ("zs_top1", "AP50") for split in ("novel", "base")]
        measured.append(f"Whole-image alignment after region pretraining: `regionclip` on whole single-digit images "
                        f"{describe(rows, 'regionclip', 'zs_top1_image', 'all')} vs its teacher "
                        f"{describe(rows, 'regionclip', 'clip_zs_top1_image', 'all')}: "
                        + paired_verdict(frame, "regionclip", "regionclip", "zs_top1_image", "all",
                                         "clip_zs_top1_image") + ".")
    sections.append(Section(
        "C2c. RegionCLIP: region-text pretraining (Zhong et al., CVPR 2022)",
        "RegionCLIP builds region-text pairs from class-agnostic proposals and a concept pool parsed from captions, "
        "pseudo-labels them with the teacher CLIP, and trains a region encoder (initialised from the teacher) with "
        "region-concept contrastive, image-text contrastive and distillation losses; it reports large gains over "
        "CLIP on zero-shot region classification and open-vocabulary detection, novel classes included. Here the "
        "teacher labels RoIAlign regions within each image's caption concepts (`regionclip.teacher_view=roi`, "
        "`regionclip.label_pool=caption`), because the tiny CLIP is near chance on crops; the paper's setting is "
        "`teacher_view=crop`, `label_pool=all`.", measured, ["region_zero_shot", "ovd_ap50"],
        _regionclip_verdict(frame, methods)))
    return sections


PROFILES = {
    "quick": {"data.train_images": 1500, "data.test_images": 40, "data.single_images": 80, "clip.epochs": 8,
              "clip.batch_size": 128, "clip.lr": 1e-3, "localizer.epochs": 1, "regionclip.images": 128,
              "eval.scatter_points": 200},
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
    config={"world": DigitsWorldConfig, "data": OvdDataConfig, "clip": TinyClipConfig, "localizer": LocalizerConfig,
            "eval": OvdEvalConfig},
    profiles=PROFILES,
    prepare=prepare,
    run_cell=run_cell,
    baseline="clip_crop",
    headline=(("zs_top1", "base"), ("zs_top1", "novel"), ("zs_top1_image", "all"), ("AP50", "novel"),
              ("AP50", "base"), ("score_iou_spearman", "all")),
    report_sections=report_sections,
))

REGISTRY.register_method(MethodSpec(
    name="clip_crop", suite="ovd",
    paper="Radford et al., ICML 2021 (CLIP), applied to pixel crops as in RegionCLIP Fig. 1",
    build=lambda cfg: ClipCrop()))
REGISTRY.register_method(MethodSpec(
    name="clip_roi", suite="ovd",
    paper="CLIP with RoIAlign region features (RegionCLIP's region encoder without pretraining), Zhong et al. 2022",
    build=lambda cfg: ClipRoi(section_config(cfg, "clip_roi", ClipRoiConfig).image_scale),
    config={"clip_roi": ClipRoiConfig}))
REGISTRY.register_method(MethodSpec(
    name="regionclip", suite="ovd",
    paper="Zhong et al., RegionCLIP: Region-based Language-Image Pretraining, CVPR 2022",
    build=lambda cfg: RegionClip(section_config(cfg, "regionclip", RegionClipConfig)),
    config={"regionclip": RegionClipConfig}))
