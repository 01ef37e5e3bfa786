"""The common detection evaluator: COCO AP, plus the open-vocabulary AP50 split.

Two backends compute the same numbers: faster-coco-eval (C++ evaluate/accumulate, the default) and pycocotools
(the reference implementation; ``tests/test_coco_eval.py`` checks that all 12 stats, the precision array and the
per-class AP50 agree to 1e-12). The default path builds the inputs of faster-coco-eval's C++ core from arrays
(``_ArrayCOCOeval``) rather than through COCO objects and per-annotation preparation; the tests check that its
results are bitwise those of the stock faster-coco-eval path.
Detections are COCO results dicts (``image_id``, ``category_id`` with the dataset's own ids, ``bbox`` absolute
xywh, ``score``). Empty detections give AP 0; pycocotools' -1 ("no ground truth in that range") is kept as is.
"""
from __future__ import annotations

import contextlib
import io
import itertools

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


def _bbox_iou(dt: np.ndarray, gt: np.ndarray, crowd: np.ndarray) -> np.ndarray:
    """IoU of paired xywh boxes (row k: ``dt[k]`` with ``gt[k]``), written op for op as COCO's ``bbIou`` (and
    faster-coco-eval's) so the values are the same to the bit: no overlap is 0, a crowd gt's union is the
    detection's own area."""
    w = np.minimum(dt[:, 0] + dt[:, 2], gt[:, 0] + gt[:, 2]) - np.maximum(dt[:, 0], gt[:, 0])
    h = np.minimum(dt[:, 1] + dt[:, 3], gt[:, 1] + gt[:, 3]) - np.maximum(dt[:, 1], gt[:, 1])
    inter = w * h
    dt_area = dt[:, 2] * dt[:, 3]
    union = np.where(crowd, dt_area, dt_area + gt[:, 2] * gt[:, 3] - inter)
    return np.divide(inter, union, out=np.zeros_like(inter), where=(w > 0) & (h > 0))


def _table(rows, width: int, n: int) -> np.ndarray:
    """``n`` rows of ``width`` numbers as an n × width float64 array, filled in one pass without per-row lists."""
    return np.fromiter(itertools.chain.from_iterable(rows), np.float64, width * n).reshape(n, width)


class _ArrayCOCOeval(faster_coco_eval.COCOeval_faster):
    """faster-coco-eval's C++ evaluate/accumulate and its summarize, with their inputs built from arrays.

    The library's ``_prepare`` and ``computeIoU`` walk COCO indexes annotation by annotation and run the IoU
    kernel once per (image, category). Here the same inputs come from one stable sort and one vectorised IoU over
    all (detection, gt) pairs that share an image and a category. What the C++ core reads is unchanged: per
    (image, category) the annotations as dicts (``id``, ``score``, ``area``, ``iscrowd``, ``ignore``) and the IoU
    matrix with the detections in COCO's order (score descending, ties in input order, at most ``maxDets[-1]``
    rows) and the gts in dataset order. Ids must be numbers, as the C++ core keys on doubles.
    """

    def __init__(self, gt: dict, detections: list[dict]):
        super().__init__(None, None, iouType="bbox")
        self.params.imgIds = sorted({im["id"] for im in gt["images"]})
        self.params.catIds = sorted({c["id"] for c in gt["categories"]})
        self._gt_anns, self._detections, self._pair_ious = gt.get("annotations", []), detections, {}

    def _prepare(self):
        p = self.params
        img_ids, cat_ids = np.asarray(p.imgIds, np.float64), np.asarray(p.catIds, np.float64)  # sorted, unique
        n_cat = len(cat_ids)

        def group_keys(img, cat):  # image index · n_categories + category index; -1 outside the evaluated ids
            i = np.searchsorted(img_ids, img).clip(max=len(img_ids) - 1)
            c = np.searchsorted(cat_ids, cat).clip(max=n_cat - 1)
            return np.where((img_ids[i] == img) & (cat_ids[c] == cat), i * n_cat + c, -1)

        # ground truth of the evaluated images and categories (as getAnnIds selects), grouped by (image, category)
        # in dataset order (a stable sort); COCO's ignore flag is iscrowd
        gts = self._gt_anns
        g = _table(((a["image_id"], a["category_id"], *a["bbox"]) for a in gts), 6, len(gts))
        g_key = group_keys(g[:, 0], g[:, 1])
        g_order = np.argsort(g_key, kind="stable")
        g_order = g_order[g_key[g_order] >= 0]
        g, g_key = g[g_order], g_key[g_order]
        g_crowd = np.array([bool(gts[k].get("iscrowd", 0)) for k in g_order.tolist()], dtype=bool)
        # detections grouped the same way, by score descending within a group; lexsort is stable, so ties keep the
        # input order as COCO's mergesort does. Ids and areas are loadRes's: position + 1, w·h.
        dts = self._detections
        d = _table(((a["image_id"], a["category_id"], a["score"], *a["bbox"]) for a in dts), 7, len(dts))
        d_key = group_keys(d[:, 0], d[:, 1])
        d_order = np.lexsort((-d[:, 2], d_key))
        d_order = d_order[d_key[d_order] >= 0]
        d, d_key = d[d_order], d_key[d_order]

        self.gt_dataset.clean()
        self.dt_dataset.clean()
        for img, cat, k, crowd in zip(g[:, 0].tolist(), g[:, 1].tolist(), g_order.tolist(), g_crowd.tolist()):
            self.gt_dataset.append_ref(img, cat, {"id": gts[k]["id"], "area": gts[k]["area"], "iscrowd": crowd,
                                                  "ignore": crowd})
        for img, cat, k, score, area in zip(d[:, 0].tolist(), d[:, 1].tolist(), (d_order + 1).tolist(),
                                            d[:, 2].tolist(), (d[:, 5] * d[:, 6]).tolist()):
            self.dt_dataset.append_ref(img, cat, {"id": k, "score": score, "area": area})

        # the IoUs of every group with both detections and gts, as one flat array of (detection, gt) pairs: the top
        # maxDets[-1] detections (rows) × the gts (columns), row-major
        d_groups, d_start, d_count = np.unique(d_key, return_index=True, return_counts=True)
        g_groups, g_start, g_count = np.unique(g_key, return_index=True, return_counts=True)
        groups, di, gi = np.intersect1d(d_groups, g_groups, assume_unique=True, return_indices=True)
        rows, cols = np.minimum(d_count[di], p.maxDets[-1]), g_count[gi]
        size = rows * cols
        offset = np.cumsum(size) - size
        pair_group = np.repeat(np.arange(len(groups)), size)
        local = np.arange(int(size.sum())) - offset[pair_group]
        d_pair = d_start[di][pair_group] + local // cols[pair_group]
        g_pair = g_start[gi][pair_group] + local % cols[pair_group]
        ious = _bbox_iou(d[d_pair, 3:], g[g_pair, 2:], g_crowd[g_pair])
        self._pair_ious = {(p.imgIds[key // n_cat], p.catIds[key % n_cat]): ious[o:o + r * c].reshape(r, c)
                           for key, o, r, c in zip(groups.tolist(), offset.tolist(), rows.tolist(), cols.tolist())}
        self._nonempty_iou_pairs = set(self._pair_ious)  # evaluate() calls computeIoU for these pairs only

    def computeIoU(self, imgId, catId):
        return self._pair_ious.get((imgId, catId), [])  # [] where either side is empty, as the library returns


def _run_cocoeval(gt: dict, detections: list[dict], backend: str):
    if backend == "pycocotools":  # the reference: its own loadRes and per-annotation preparation, untouched
        gt_coco = coco_from_dict(gt, backend)
        with contextlib.redirect_stdout(io.StringIO()):
            evaluator = pycocotools.cocoeval.COCOeval(gt_coco, gt_coco.loadRes([dict(d) for d in detections]),
                                                      iouType="bbox")  # loadRes adds keys to each dict
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
        return evaluator
    evaluator = _ArrayCOCOeval(gt, detections)
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
        evaluator = _run_cocoeval(gt, detections, backend)
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
