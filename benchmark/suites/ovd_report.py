"""What the ``ovd`` suite's numbers say: its family of claims (Holm-adjusted together), the report section of each
course question with its measured lines, and the verdict on each claim, computed from the intervals.
"""
from __future__ import annotations

import pandas as pd

from benchmark.claims import Arm, Claim, Tested, brief_line
from benchmark.findings import Finding, SuiteReport, finding, paper_verdict
from benchmark.metric_summaries import describe, summary_row, summary_rows
from benchmark.registry import REGISTRY, Section

REGION_METRICS = tuple((metric, split) for metric in ("zs_top1", "AP50") for split in ("novel", "base"))
DELTA = 0.02  # the smallest effect of interest on top-1 and AP50: two points
C1 = "C1. CLIP: training and zero-shot inference"
C2A = "C2a. CLIP's region scores do not reflect localization quality (RegionCLIP Fig. 1(a))"
C2B = "C2b. Classifying crops works poorly (RegionCLIP Fig. 1(b), Table 4)"
C2C = "C2c. RegionCLIP: region-text pretraining (Zhong et al., CVPR 2022)"


def claims(frame: pd.DataFrame) -> list[Claim]:
    """The suite's claims: positive controls (the CLIP above chance, crops below whole images, RoIAlign above crops),
    the four primary claims (RegionCLIP against RoIAlign CLIP, the comparison that isolates region-text
    pretraining), the rest secondary."""
    methods = set(frame["method"])
    out = []
    if methods and not frame[frame["metric"] == "chance_top1"].empty:
        first = sorted(methods)[0]
        out.append(Claim("clip:chance", "CLIP whole-image zero-shot top-1 − chance (1 / classes)",
                         Arm(first, "clip_zs_top1_image", "all"), Arm(first, "chance_top1", "all"), role="control",
                         expected="higher", delta=DELTA))
    if "clip_crop" in methods:
        out.append(Claim("crop:image", "`clip_crop` on ground-truth crops − the same CLIP on whole images",
                         Arm("clip_crop", "zs_top1", "all"), Arm("clip_crop", "zs_top1_image", "all"),
                         role="control", expected="lower", delta=DELTA))
    if {"clip_roi", "clip_crop"} <= methods:
        out.append(Claim("roi:crop", "`clip_roi` − `clip_crop` top-1 on ground-truth boxes",
                         Arm("clip_roi", "zs_top1", "all"), Arm("clip_crop", "zs_top1", "all"), role="control",
                         expected="higher", delta=DELTA))
    if "regionclip" in methods and not frame[frame["metric"] == "student_teacher_agreement"].empty:
        # RegionCLIP's own control: pretraining taught the student its teacher's pseudo-labels (else its rows test
        # a pretraining that did not happen)
        out.append(Claim("regionclip:learned", "`regionclip` student's agreement with its teacher's pseudo-labels − "
                         "chance (its pretraining regions)", Arm("regionclip", "student_teacher_agreement", "train"),
                         Arm("regionclip", "agreement_chance", "train"), role="control", expected="higher",
                         delta=DELTA))
    if "regionclip" in methods:
        out += [Claim(f"regionclip:{b}:{metric}:{split}", f"`regionclip` − `{b}` {metric} on {split} classes",
                      Arm("regionclip", metric, split), Arm(b, metric, split),
                      role="primary" if b == "clip_roi" else "secondary", expected="higher", delta=DELTA)
                for b in ("clip_roi", "clip_crop") if b in methods for metric, split in REGION_METRICS]
        out.append(Claim("regionclip:image", "`regionclip` − its teacher CLIP, whole-image top-1",
                         Arm("regionclip", "zs_top1_image", "all"), Arm("regionclip", "clip_zs_top1_image", "all"),
                         delta=DELTA))
    return out


def verdict_clip_above_chance(t: Tested | None) -> str:
    if t is None or not t.n:
        return "Chance level (`chance_top1`) not in metrics.csv: not tested."
    if t.holds:
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
    text = ("Yes: crop accuracy is below whole-image accuracy (Holm-adjusted)." if t.holds
            else f"No: crop − image is {t.verdict()}.")
    if timings is not None and not timings.empty:
        times = summary_rows(timings)
        crop = summary_row(times, "clip_crop", "seconds_per_image", "all")
        roi = summary_row(times, "clip_roi", "seconds_per_image", "all")
        if crop is not None and roi is not None:
            text += (f" Cost: cropping every proposal took {crop['mean'] / roi['mean']:.1f}× the CPU time of one "
                     f"RoIAlign pass per image here (timings.csv; machine-dependent).")
    return text


def regionclip_cost(tested: dict[str, Tested]) -> str:
    """What region pretraining cost: the whole-image zero-shot top-1 against the teacher CLIP it started from."""
    t = tested.get("regionclip:image")
    return "" if t is None or not t.n else f"cost: whole-image top-1 against its teacher CLIP {brief_line(t)}"


def verdict_regionclip_above_clip(tested: dict[str, Tested]) -> str:
    """RegionCLIP against RoIAlign CLIP (same regions, same teacher: only region-text pretraining differs)."""
    primary = [t for key, t in tested.items() if key.startswith("regionclip:clip_roi:")]
    if not primary:
        return ""
    counts = {v: sum(paper_verdict(t).split(" ")[0] == v for t in primary)
              for v in ("reproduced", "contradicted", "equivalent", "inconclusive")}
    shown = ", ".join(f"{v} in {k}" for v, k in counts.items() if k)
    cost = regionclip_cost(tested)
    return (f"Against `clip_roi` (the comparison that isolates region-text pretraining), {len(primary)} primary "
            f"claims: {shown}. " + " ".join(f"{t.claim.text}: {paper_verdict(t)}, {t.seed_directions()}."
                                            for t in primary) + (f" Measured {cost}." if cost else ""))


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
        C1,
        "CLIP trains an image and a text encoder contrastively on image-caption pairs: the N matching pairs on the "
        "diagonal of the N×N similarity matrix are pulled up, all others pushed down. Zero-shot classification embeds "
        "one prompt per class name and picks the class whose prompt is most similar to the image.",
        measured, ["fig1b_crop_vs_image"], verdict_clip_above_chance(tested.get("clip:chance")))


def _score_vs_iou_section(rows: pd.DataFrame, methods: set[str]) -> Section:
    present = REGISTRY.method_names("ovd", methods)
    measured = [f"`{m}`: Spearman ρ between a proposal's zero-shot score and its IoU with the best ground truth "
                f"{describe(rows, m, 'score_iou_spearman', 'all')}." for m in present]
    return Section(
        C2A,
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
        C2B,
        "Even on ground-truth boxes, CLIP classifies cropped regions far worse than whole images: it learned whole "
        "images with their context, and a crop removes the context and changes the scale. Cropping every proposal "
        "and running CLIP on each is also expensive.", measured, ["fig1b_crop_vs_image"],
        verdict_crops_below_images(tested, timings))


def _regionclip_section(rows: pd.DataFrame, tested: dict[str, Tested]) -> Section:
    measured = [f"{t.claim.text}: {t.line()} ({t.claim.role})." for key, t in tested.items()
                if key.startswith("regionclip:clip_")]
    measured.append("Scope: one tiny CLIP and one localizer, trained once from their own config seeds and cached, "
                    "serve every seed; a seed resamples RegionCLIP's pretraining, the evaluation canvases and "
                    "region draws, not the teacher, so these intervals are conditional on that one teacher.")
    if summary_row(rows, "regionclip", "pseudo_label_accuracy", "train") is not None:
        measured.append("Pseudo-labels on `regionclip`'s pretraining regions (its first 256 images): accuracy on "
                        "regions overlapping a box at IoU ≥ 0.5 "
                        f"{describe(rows, 'regionclip', 'pseudo_label_accuracy', 'train')}; kept by the filter "
                        f"{describe(rows, 'regionclip', 'pseudo_label_kept', 'train')}; regions on an object "
                        f"{describe(rows, 'regionclip', 'regions_on_objects', 'train')}; last-epoch region–concept "
                        f"loss over ln K {describe(rows, 'regionclip', 'region_loss_over_ln_k', 'train')}"
                        + (f"; the student learned them: {t.line()}" if (t := tested.get("regionclip:learned"))
                           is not None else "") + ".")
    if (t := tested.get("regionclip:image")) is not None:
        measured.append(f"Whole-image alignment after region pretraining: `regionclip` on whole single-digit images "
                        f"{describe(rows, 'regionclip', 'zs_top1_image', 'all')} vs its teacher "
                        f"{describe(rows, 'regionclip', 'clip_zs_top1_image', 'all')}: {t.line()}.")
    return Section(
        C2C,
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


def _iou_finding(frame: pd.DataFrame) -> Finding:
    """Reproduced where every method's 95% interval of ρ lies inside (−0.3, 0.3); contradicted where one lies
    wholly outside it; inconclusive otherwise."""
    rows = summary_rows(frame)
    present = REGISTRY.method_names("ovd", set(frame["method"]))
    rhos = {m: r for m in present
            if (r := summary_row(rows, m, "score_iou_spearman", "all")) is not None and r["n"] > 1}
    if not rhos:
        return Finding(C2A, "A region's CLIP score says little about its IoU", "untestable here: not measured")
    inside = [m for m, r in rhos.items() if -0.3 < r["ci_low"] and r["ci_high"] < 0.3]
    outside = [m for m, r in rhos.items() if r["ci_low"] >= 0.3 or r["ci_high"] <= -0.3]
    verdict = ("reproduced" if len(inside) == len(rhos) else "contradicted" if outside else "inconclusive")
    return Finding(C2A, "A region's CLIP score says little about its IoU (|Spearman ρ| < 0.3)", verdict,
                   ", ".join(f"`{m}` ρ {describe(rows, m, 'score_iou_spearman', 'all')}" for m in rhos))


def findings(frame: pd.DataFrame, tested: dict[str, Tested]) -> list[Finding]:
    """REPORT.md's first table: the controls the question rests on, RegionCLIP against RoIAlign CLIP with its
    measured cost, and what the digits world cannot test."""
    cost = regionclip_cost(tested)
    return [
        finding(C1, "Contrastive CLIP classifies whole images zero-shot above chance", tested.get("clip:chance")),
        _iou_finding(frame),
        finding(C2B, "Crops of ground-truth boxes classify worse than whole images", tested.get("crop:image")),
        finding(C2B, "Pooling regions from the whole-image feature map (RoIAlign) beats crops", tested.get("roi:crop")),
        *[finding(C2C, f"RegionCLIP beats RoIAlign CLIP: {metric} on {split} classes",
                  tested.get(f"regionclip:clip_roi:{metric}:{split}"), cost if i == 0 else "")
          for i, (metric, split) in enumerate(REGION_METRICS)],
        Finding(C2C, "Gains from pretraining on CC3M captions transfer to COCO/LVIS detection",
                "untestable here: the digits world has 10 concepts and no web-scale captions"),
    ]


report_sections = SuiteReport(claims, sections, findings)
