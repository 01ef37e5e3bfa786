"""The common detection evaluator: COCO AP, plus the open-vocabulary AP50 split.

Two backends compute the same numbers: faster-coco-eval (C++ evaluate/accumulate, the default) and pycocotools
(the reference implementation; ``tests/test_coco_eval.py`` checks that all 12 stats and the precision array agree).
Detections are COCO results dicts (``image_id``, ``category_id`` with the dataset's own ids, ``bbox`` absolute
xywh, ``score``). Empty detections give AP 0; pycocotools' -1 ("no ground truth in that range") is kept as is.
"""
from __future__ import annotations

import contextlib
import io

import faster_coco_eval
import numpy as np
import pycocotools.coco
import pycocotools.cocoeval

STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
BACKENDS = {"faster-coco-eval": (faster_coco_eval.COCO, faster_coco_eval.COCOeval_faster),
            "pycocotools": (pycocotools.coco.COCO, pycocotools.cocoeval.COCOeval)}
DEFAULT_BACKEND = "faster-coco-eval"


def coco_from_dict(gt: dict, backend: str = DEFAULT_BACKEND):
    coco = BACKENDS[backend][0]()
    # evaluation writes into the annotation dicts ("ignore"): copy those, share the rest
    coco.dataset = {"info": {}, **gt, "annotations": [dict(a) for a in gt.get("annotations", [])]}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _results_set(gt, detections: list[dict], backend: str):
    """The detections as a COCO results set. pycocotools (the reference) goes through its own ``loadRes``; for
    faster-coco-eval the set is built here in one pass with what bbox evaluation reads (id, area = w·h, iscrowd 0 —
    exactly ``loadRes``'s values), without the box-shaped segmentation polygons ``loadRes`` makes for every
    detection, which bbox evaluation never reads and which were most of the evaluator's Python time."""
    if backend == "pycocotools":
        return gt.loadRes([dict(d) for d in detections])  # loadRes adds keys to each dict, never the bbox
    results = BACKENDS[backend][0]()
    results.dataset = {"info": {}, "images": gt.dataset["images"], "categories": gt.dataset["categories"],
                       "annotations": [{"id": i, "image_id": d["image_id"], "category_id": d["category_id"],
                                        "bbox": d["bbox"], "score": d["score"], "area": d["bbox"][2] * d["bbox"][3],
                                        "iscrowd": 0} for i, d in enumerate(detections, 1)]}
    results.createIndex()
    return results


def _run_cocoeval(gt, detections: list[dict], backend: str):
    with contextlib.redirect_stdout(io.StringIO()):
        dt = _results_set(gt, detections, backend)
        evaluator = BACKENDS[backend][1](gt, dt, iouType="bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator


def per_class_ap50(evaluator) -> dict[int, float]:
    """AP at IoU 0.5, area "all", 100 detections, per category id (NaN where the class has no ground truth)."""
    precision = evaluator.eval["precision"][0, :, :, 0, -1]  # [recall, category]
    out = {}
    for k, cat_id in enumerate(evaluator.params.catIds):
        p = precision[:, k]
        out[cat_id] = float(np.mean(p[p > -1])) if np.any(p > -1) else float("nan")
    return out


def evaluate_detections(gt: dict, detections: list[dict], novel_cat_ids: list[int] | None = None,
                        backend: str = DEFAULT_BACKEND) -> dict[str, float]:
    """COCO stats (``STAT_NAMES``) and, when ``novel_cat_ids`` is given, ``AP50_base/novel/all``.

    The OV split is "generalized": all classes are detected and scored together, and the per-class AP50 is then
    averaged over the novel, the base and all categories (as in OV-COCO).
    """
    gt_coco = coco_from_dict(gt, backend)
    gt_cats = {c["id"] for c in gt["categories"]}
    unknown = {d["category_id"] for d in detections} - gt_cats
    if unknown:
        raise ValueError(f"detections use category ids not in the ground truth: {sorted(unknown)}")
    unknown = {d["image_id"] for d in detections} - {im["id"] for im in gt["images"]}
    if unknown:
        raise ValueError(f"detections use image ids not in the ground truth: {sorted(unknown)[:10]}")
    if not detections:
        stats = dict.fromkeys(STAT_NAMES, 0.0)
        per_class = {c: 0.0 for c in sorted(gt_cats)}
    else:
        evaluator = _run_cocoeval(gt_coco, detections, backend)
        stats = {name: float(v) for name, v in zip(STAT_NAMES, evaluator.stats)}
        per_class = per_class_ap50(evaluator)
    if novel_cat_ids is not None:
        with_gt = {ann["category_id"] for ann in gt["annotations"]}
        groups = {"novel": [c for c in per_class if c in set(novel_cat_ids)],
                  "base": [c for c in per_class if c not in set(novel_cat_ids)], "all": list(per_class)}
        for name, ids in groups.items():
            values = [per_class[c] for c in ids if c in with_gt]
            stats[f"AP50_{name}"] = float(np.mean(values)) if values else float("nan")
    return stats
