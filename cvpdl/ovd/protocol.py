"""The common ``ovd`` evaluation of one region classifier: zero-shot region classification on ground-truth boxes,
whole-image zero-shot, locate-then-classify detection (generalized OV AP50) and score-vs-IoU (RegionCLIP Fig. 1).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from cvpdl.analysis.score_vs_iou import best_iou, jitter_boxes, score_iou_spearman
from cvpdl.data.captions import prompt
from cvpdl.data.detection_split import DetectionSplit
from cvpdl.evaluation.classification import split_top1
from cvpdl.evaluation.coco_eval import evaluate_detections
from cvpdl.ovd.region_classifier import OvdContext, RegionClassifier, embed_images

LOGIT_SCALE = 100.0  # CLIP's trained temperature for zero-shot softmax scores


@dataclass(frozen=True)
class OvdEvalConfig:
    jitter_per_box: int = 4
    scatter_points: int = 1500  # proposals kept per cell for the Fig. 1(a) scatter


@dataclass
class OvdResult:
    metrics: list[tuple[str, str, float]]  # (split, metric, value)
    timings: list[tuple[str, str, float]]
    scatter: pd.DataFrame  # score vs IoU points


def _stack(split: DetectionSplit) -> np.ndarray:
    if isinstance(split.images, np.ndarray):
        return split.images
    return np.stack([split.image(i) for i in range(len(split))])


def class_text(ctx: OvdContext) -> torch.Tensor:
    with torch.no_grad():
        return ctx.clip.encode_text([prompt(n) for n in ctx.class_names]).cpu()


def gt_box_top1(method: RegionClassifier, ctx: OvdContext, split: DetectionSplit, text: torch.Tensor | None = None,
                images: np.ndarray | None = None) -> dict[str, float]:
    """Zero-shot top-1 of the method's region classification on the split's ground-truth boxes (base/novel/all)."""
    text = class_text(ctx) if text is None else text
    images = _stack(split) if images is None else images
    gt_boxes = [split.target(i)[0] for i in range(len(split))]
    gt_labels = torch.as_tensor(np.concatenate([split.target(i)[1] for i in range(len(split))]))
    return split_top1(method.embed_regions(ctx, images, gt_boxes) @ text.T, gt_labels, split.novel_classes)


def evaluate_ovd(method: RegionClassifier, ctx: OvdContext, test: DetectionSplit, single: DetectionSplit,
                 test_proposals: list[tuple[np.ndarray, np.ndarray]], cfg: OvdEvalConfig,
                 generator: torch.Generator) -> OvdResult:
    text = class_text(ctx)
    images = _stack(test)
    novel = test.novel_classes
    metrics: list[tuple[str, str, float]] = []

    def add(name: str, values: dict[str, float]) -> None:
        metrics.extend((split, name, value) for split, value in values.items())

    add("zs_top1", gt_box_top1(method, ctx, test, text, images))

    # whole single-digit images (Fig. 1(b)): the method's encoder, and the CLIP itself
    single_images = _stack(single)
    single_labels = torch.as_tensor(np.array([single.target(i)[1][0] for i in range(len(single))]))
    add("zs_top1_image", split_top1(method.embed_images(ctx, single_images) @ text.T, single_labels, novel))
    clip_logits = embed_images(ctx.clip, single_images, ctx.batch_size) @ text.T
    add("clip_zs_top1_image", split_top1(clip_logits, single_labels, novel))

    # locate (shared class-agnostic localizer), then classify each proposal
    boxes = [b for b, _ in test_proposals]
    # process CPU time (all threads), not wall clock: other load on the machine does not enter the cost
    start = time.process_time()
    probs = (LOGIT_SCALE * method.embed_regions(ctx, images, boxes) @ text.T).softmax(dim=1)
    seconds_per_image = (time.process_time() - start) / len(test)
    confidence, label = probs.max(dim=1)
    objectness = torch.as_tensor(np.concatenate([s for _, s in test_proposals]), dtype=torch.float32)
    score = (objectness * confidence).tolist()
    label = label.tolist()
    detections, k = [], 0
    for i, (image_boxes, _) in enumerate(test_proposals):
        for x0, y0, x1, y1 in image_boxes.tolist():
            detections.append({"image_id": test.image_ids[i], "category_id": test.cat_ids[label[k]],
                               "bbox": [x0, y0, x1 - x0, y1 - y0], "score": score[k]})
            k += 1
    stats = evaluate_detections(test.coco, detections, test.novel_cat_ids)
    add("AP50", {s: stats[f"AP50_{s}"] for s in ("base", "novel", "all")})
    add("AP", {"all": stats["AP"]})

    # Fig. 1(a): score of proposals of every quality vs their IoU with the best-matching ground truth
    size = images.shape[1]
    gt_boxes = [test.target(i)[0] for i in range(len(test))]
    jittered = [jitter_boxes(b, cfg.jitter_per_box, size, generator) for b in gt_boxes]
    jitter_scores = (LOGIT_SCALE * method.embed_regions(ctx, images, jittered) @ text.T).softmax(dim=1).max(dim=1)
    ious = np.concatenate([best_iou(j, g) for j, g in zip(jittered, gt_boxes)])
    scores = jitter_scores.values.numpy()
    add("score_iou_spearman", {"all": score_iou_spearman(scores, ious)})
    keep = torch.randperm(len(ious), generator=generator)[:cfg.scatter_points].numpy()
    scatter = pd.DataFrame({"iou": ious[keep], "score": scores[keep]})
    return OvdResult(metrics, [("all", "seconds_per_image", seconds_per_image)], scatter)
