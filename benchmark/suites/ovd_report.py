"""What the ``ovd`` suite's numbers say: its family of claims (Holm-adjusted together), the report section of each
course question with its measured lines, and the verdict on each claim, computed from the intervals.
"""
from __future__ import annotations

import pandas as pd

from benchmark.claims import Arm, Claim, SuiteReport, Tested, describe, summary_row, summary_rows
from benchmark.registry import REGISTRY, Section

REGION_BASELINES = ("clip_crop", "clip_roi")
REGION_METRICS = tuple((metric, split) for metric in ("zs_top1", "AP50") for split in ("novel", "base"))


def claims(frame: pd.DataFrame) -> list[Claim]:
    """The suite's family of claims: every comparison its sections assert, Holm-adjusted together."""
    methods = set(frame["method"])
    out = []
    if methods and not frame[frame["metric"] == "chance_top1"].empty:
        first = sorted(methods)[0]
        out.append(Claim("clip:chance", "CLIP whole-image zero-shot top-1 − chance (1 / classes)",
                         Arm(first, "clip_zs_top1_image", "all"), Arm(first, "chance_top1", "all")))
    if "clip_crop" in methods:
        out.append(Claim("crop:image", "`clip_crop` on ground-truth crops − the same CLIP on whole images",
                         Arm("clip_crop", "zs_top1", "all"), Arm("clip_crop", "zs_top1_image", "all")))
    if {"clip_roi", "clip_crop"} <= methods:
        out.append(Claim("roi:crop", "`clip_roi` − `clip_crop` top-1 on ground-truth boxes",
                         Arm("clip_roi", "zs_top1", "all"), Arm("clip_crop", "zs_top1", "all")))
    if "regionclip" in methods:
        out += [Claim(f"regionclip:{b}:{metric}:{split}", f"`regionclip` − `{b}` {metric} on {split} classes",
                      Arm("regionclip", metric, split), Arm(b, metric, split))
                for b in REGION_BASELINES if b in methods for metric, split in REGION_METRICS]
        out.append(Claim("regionclip:image", "`regionclip` − its teacher CLIP, whole-image top-1",
                         Arm("regionclip", "zs_top1_image", "all"), Arm("regionclip", "clip_zs_top1_image", "all")))
    return out


def verdict_clip_above_chance(t: Tested | None) -> str:
    if t is None or not t.n:
        return "Chance level (`chance_top1`) not in metrics.csv: not tested."
    if t.direction == "higher":
        return "Yes: the contrastively trained CLIP classifies whole images zero-shot above chance."
    return f"No: the CLIP is not significantly above chance ({t.direction}), so the region results below mean little."


def verdict_scores_ignore_iou(rows: pd.DataFrame, methods: list[str]) -> str:
    """"Weak" when the whole 95% interval of the mean ρ lies inside (-0.3, 0.3), not from the mean alone."""
    rhos = {m: r for m in methods if (r := summary_row(rows, m, "score_iou_spearman", "all")) is not None}
    weak = [m for m, r in rhos.items() if r["n"] > 1 and -0.3 < r["ci_low"] and r["ci_high"] < 0.3]
    if rhos and len(weak) == len(rhos):
        return ("Yes: for every method the 95% interval of ρ lies within (−0.3, 0.3); a region's score says little "
                "about its IoU.")
    return f"Partly: the 95% interval of ρ lies within (−0.3, 0.3) only for {', '.join(weak) or 'no method'}."


def verdict_crops_below_images(tested: dict[str, Tested], timings: pd.DataFrame | None) -> str:
    t = tested.get("crop:image")
    if t is None:
        return ""
    text = ("Yes: crop accuracy is below whole-image accuracy (Holm-adjusted)." if t.direction == "lower"
            else f"No: crop − image is {t.direction}.")
    if timings is not None and not timings.empty:
        times = summary_rows(timings)
        crop = summary_row(times, "clip_crop", "seconds_per_image", "all")
        roi = summary_row(times, "clip_roi", "seconds_per_image", "all")
        if crop is not None and roi is not None:
            text += (f" Cost: cropping every proposal took {crop['mean'] / roi['mean']:.1f}× the CPU time of one "
                     f"RoIAlign pass per image here (timings.csv; machine-dependent).")
    return text


def verdict_regionclip_above_clip(tested: dict[str, Tested]) -> str:
    sides = [t.direction for key, t in tested.items() if key.startswith("regionclip:clip_")]
    if not sides:
        return ""
    higher = sides.count("higher")
    if higher == len(sides):
        return "Yes: RegionCLIP is significantly higher in every comparison (Holm-adjusted), novel and base alike."
    return (f"Partly: RegionCLIP is significantly higher in {higher} of {len(sides)} comparisons (Holm-adjusted), "
            f"{sides.count('lower')} lower, the rest not significant at this number of seeds.")


def _clip_section(rows: pd.DataFrame, methods: set[str], tested: dict[str, Tested]) -> Section:
    first = sorted(methods)[0]
    chance = summary_row(rows, first, "chance_top1", "all")
    measured = [f"The harness's CLIP classifies whole single-digit test canvases zero-shot with top-1 "
                f"{describe(rows, first, 'clip_zs_top1_image', 'all')}"
                + (f" (chance {chance['mean']:.3f}, 1 / classes)" if chance is not None else "")
                + f"; base {describe(rows, first, 'clip_zs_top1_image', 'base')}, novel "
                f"{describe(rows, first, 'clip_zs_top1_image', 'novel')}."]
    if (t := tested.get("clip:chance")) is not None:
        measured.append(f"Whole-image top-1 − chance: {t.line()}.")
    return Section(
        "C1. CLIP: training and zero-shot inference",
        "CLIP trains an image and a text encoder contrastively on image-caption pairs: the N matching pairs on the "
        "diagonal of the N×N similarity matrix are pulled up, all others pushed down. Zero-shot classification embeds "
        "one prompt per class name and picks the class whose prompt is most similar to the image.",
        measured, ["fig1b_crop_vs_image"], verdict_clip_above_chance(tested.get("clip:chance")))


def _score_vs_iou_section(rows: pd.DataFrame, methods: set[str]) -> Section:
    present = REGISTRY.method_names("ovd", methods)
    measured = [f"`{m}`: Spearman ρ between a proposal's zero-shot score and its IoU with the best ground truth "
                f"{describe(rows, m, 'score_iou_spearman', 'all')}." for m in present]
    return Section(
        "C2a. CLIP's region scores do not reflect localization quality (RegionCLIP Fig. 1(a))",
        "RegionCLIP observes that CLIP's score of a proposal is nearly unrelated to how well the proposal covers the "
        "object, so a detector cannot rank its boxes with it.", measured, ["fig1a_score_vs_iou"],
        verdict_scores_ignore_iou(rows, present))


def _crop_section(rows: pd.DataFrame, methods: set[str], timings: pd.DataFrame | None,
                  tested: dict[str, Tested]) -> Section:
    measured = []
    if (t := tested.get("crop:image")) is not None:
        measured.append(f"`clip_crop` on ground-truth crops {describe(rows, 'clip_crop', 'zs_top1', 'all')} vs the "
                        f"same CLIP on whole single-digit images {describe(rows, 'clip_crop', 'zs_top1_image', 'all')}:"
                        f" crop − image {t.line()}.")
    if "clip_roi" in methods:
        measured.append(f"`clip_roi` (RoIAlign on the whole-image feature map) on the same boxes "
                        f"{describe(rows, 'clip_roi', 'zs_top1', 'all')}"
                        + (f"; vs `clip_crop` {t.line()}" if (t := tested.get("roi:crop")) is not None else "") + ".")
    if timings is not None and not timings.empty:
        times = summary_rows(timings)
        cost = [f"`{m}` {summary_row(times, m, 'seconds_per_image', 'all')['mean'] * 1000:.1f} ms"
                for m in REGISTRY.method_names("ovd") if summary_row(times, m, 'seconds_per_image', 'all') is not None]
        if cost:
            measured.append("Cost of classifying the localizer's proposals, per image (process CPU time, all "
                            "threads; machine-dependent): " + ", ".join(cost) + ".")
    return Section(
        "C2b. Classifying crops works poorly (RegionCLIP Fig. 1(b), Table 4)",
        "Even on ground-truth boxes, CLIP classifies cropped regions far worse than whole images: it learned whole "
        "images with their context, and a crop removes the context and changes the scale. Cropping every proposal "
        "and running CLIP on each is also expensive.", measured, ["fig1b_crop_vs_image"],
        verdict_crops_below_images(tested, timings))


def _regionclip_section(rows: pd.DataFrame, tested: dict[str, Tested]) -> Section:
    measured = [f"{t.claim.text}: {t.line()}." for key, t in tested.items() if key.startswith("regionclip:clip_")]
    if (t := tested.get("regionclip:image")) is not None:
        measured.append(f"Whole-image alignment after region pretraining: `regionclip` on whole single-digit images "
                        f"{describe(rows, 'regionclip', 'zs_top1_image', 'all')} vs its teacher "
                        f"{describe(rows, 'regionclip', 'clip_zs_top1_image', 'all')}: {t.line()}.")
    return Section(
        "C2c. RegionCLIP: region-text pretraining (Zhong et al., CVPR 2022)",
        "RegionCLIP builds region-text pairs from class-agnostic proposals and a concept pool parsed from captions, "
        "pseudo-labels them with the teacher CLIP, and trains a region encoder (initialised from the teacher) with "
        "region-concept contrastive, image-text contrastive and distillation losses; it reports large gains over "
        "CLIP on zero-shot region classification and open-vocabulary detection, novel classes included. Here the "
        "teacher labels RoIAlign regions, as the official code does, but chooses each label among its own image's "
        "caption concepts (`regionclip.label_pool=caption`), a declared deviation (see Limitations); the paper's "
        "setting is `label_pool=all`.", measured, ["region_zero_shot", "ovd_ap50"],
        verdict_regionclip_above_clip(tested))


def sections(frame: pd.DataFrame, timings: pd.DataFrame | None, tested: dict[str, Tested]) -> list[Section]:
    """The suite's course questions (C1, C2a–c) with what was measured and the verdicts."""
    rows = summary_rows(frame)
    methods = set(frame["method"])
    return [_clip_section(rows, methods, tested), _score_vs_iou_section(rows, methods),
            _crop_section(rows, methods, timings, tested), _regionclip_section(rows, tested)]


report_sections = SuiteReport(claims, sections)
