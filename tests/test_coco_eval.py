"""The common evaluator against hand-computed cases and against raw pycocotools."""
import contextlib
import io
import json

import faster_coco_eval
import numpy as np
import pycocotools.mask
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from cvpdl.evaluation.coco_eval import (BACKENDS, STAT_NAMES, _bbox_iou, _run_cocoeval, coco_from_dict,
                                        evaluate_detections, per_class_ap50)


def make_gt():
    """Non-contiguous category ids (3, 7, 11), a crowd box and an image without annotations."""
    images = [{"id": i, "width": 100, "height": 100} for i in (1, 2, 3, 4)]
    anns = [
        {"id": 1, "image_id": 1, "category_id": 3, "bbox": [10, 10, 20, 20], "area": 400, "iscrowd": 0},
        {"id": 2, "image_id": 1, "category_id": 7, "bbox": [50, 50, 30, 30], "area": 900, "iscrowd": 0},
        {"id": 3, "image_id": 2, "category_id": 11, "bbox": [5, 5, 60, 60], "area": 3600, "iscrowd": 0},
        {"id": 4, "image_id": 2, "category_id": 3, "bbox": [70, 70, 25, 25], "area": 625, "iscrowd": 1},
        {"id": 5, "image_id": 3, "category_id": 7, "bbox": [0, 0, 40, 40], "area": 1600, "iscrowd": 0},
    ]
    cats = [{"id": 3, "name": "a"}, {"id": 7, "name": "b"}, {"id": 11, "name": "c"}]
    return {"images": images, "annotations": anns, "categories": cats}


def gt_as_detections(gt):
    return [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
            for a in gt["annotations"] if not a["iscrowd"]]


@pytest.mark.parametrize("backend", BACKENDS)
def test_ground_truth_fed_back_scores_one(backend):
    stats = evaluate_detections(make_gt(), gt_as_detections(make_gt()), backend=backend)
    assert stats["AP"] == pytest.approx(1.0)
    assert stats["AP50"] == pytest.approx(1.0)
    assert stats["AR100"] == pytest.approx(1.0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_detections_give_zero_not_a_crash(backend):
    stats = evaluate_detections(make_gt(), [], novel_cat_ids=[7], backend=backend)
    assert all(stats[k] == 0.0 for k in STAT_NAMES)
    assert stats["AP50_novel"] == 0.0 and stats["AP50_base"] == 0.0


@pytest.mark.parametrize("backend", BACKENDS)
def test_detection_on_crowd_region_is_ignored_not_a_false_positive(backend):
    gt = make_gt()
    dets = gt_as_detections(gt) + [{"image_id": 2, "category_id": 3, "bbox": [70, 70, 25, 25], "score": 0.99}]
    assert evaluate_detections(gt, dets, backend=backend)["AP"] == pytest.approx(1.0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_hand_computed_precision_recall(backend):
    """Category 7 has two GTs. Detections by score: TP (0.9), FP (0.8), TP (0.7).
    Precision at recall 0.5 is 1.0, at recall 1.0 it is 2/3; COCO's 101-point interpolated AP at IoU .5 is
    (51 * 1.0 + 50 * 2/3) / 101 for class 7; classes 3 and 11 are detected perfectly (AP 1)."""
    gt = make_gt()
    dets = [d for d in gt_as_detections(gt) if d["category_id"] != 7]
    dets += [{"image_id": 1, "category_id": 7, "bbox": [50, 50, 30, 30], "score": 0.9},
             {"image_id": 4, "category_id": 7, "bbox": [10, 10, 10, 10], "score": 0.8},
             {"image_id": 3, "category_id": 7, "bbox": [0, 0, 40, 40], "score": 0.7}]
    stats = evaluate_detections(gt, dets, novel_cat_ids=[7], backend=backend)
    ap7 = (51 * 1.0 + 50 * 2 / 3) / 101
    assert stats["AP50_novel"] == pytest.approx(ap7)
    assert stats["AP50_base"] == pytest.approx(1.0)
    assert stats["AP50_all"] == pytest.approx((ap7 + 2) / 3)
    assert stats["AP50"] == pytest.approx((ap7 + 2) / 3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_matches_raw_pycocotools_on_random_detections(tmp_path, backend):
    """Both backends give raw pycocotools' 12 stats and the same OV split (to the last bits of a float sum)."""
    gt = make_gt()
    rng = np.random.default_rng(0)
    dets = []
    for image_id in (1, 2, 3, 4):
        for _ in range(15):
            x, y = rng.uniform(0, 70, 2)
            w, h = rng.uniform(5, 40, 2)
            dets.append({"image_id": image_id, "category_id": int(rng.choice([3, 7, 11])),
                         "bbox": [x, y, w, h], "score": float(rng.uniform())})
    dets += gt_as_detections(gt)
    ours = evaluate_detections(gt, dets, novel_cat_ids=[7], backend=backend)
    reference = evaluate_detections(gt, dets, novel_cat_ids=[7], backend="pycocotools")
    assert ours == pytest.approx(reference, rel=1e-12, abs=1e-12)
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(tmp_path / "gt.json"))
        ev = COCOeval(coco, coco.loadRes(dets), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    assert [ours[k] for k in STAT_NAMES] == pytest.approx(list(ev.stats), rel=1e-12, abs=1e-12)


def test_unknown_category_in_detections_is_an_error():
    with pytest.raises(ValueError, match="99"):
        evaluate_detections(make_gt(), [{"image_id": 1, "category_id": 99, "bbox": [0, 0, 1, 1], "score": 1}])


def test_detections_for_images_not_in_the_ground_truth_are_an_error():
    with pytest.raises(ValueError, match="image ids not in the ground truth: \\[42\\]"):
        evaluate_detections(make_gt(), [{"image_id": 42, "category_id": 3, "bbox": [0, 0, 1, 1], "score": 1}])


def random_coco(seed: int):
    """A set built to trip a vectorised evaluator: shuffled annotation order, non-contiguous ids, crowds, a gt
    ``area`` unlike w·h (COCO's area ranges read the field), boxes across the small/medium/large ranges, scores
    rounded to one decimal (many ties) with duplicated boxes, one (image, category) with more detections than
    maxDets, images without gt or without detections, a category without gt and one without detections."""
    rng = np.random.default_rng(seed)
    cat_ids = [2, 5, 9, 14, 30]  # 30 has no gt, 14 no detections
    images = [{"id": int(i), "width": 300, "height": 300} for i in rng.permutation(np.arange(10, 40))]
    anns, dets = [], []
    for image in images[:-4]:  # the last four have no gt
        for _ in range(int(rng.integers(0, 7))):
            x, y = rng.uniform(0, 200, 2)
            w, h = np.exp(rng.uniform(np.log(4), np.log(150), 2))
            anns.append({"id": int(rng.integers(1, 10**6)) * 100 + len(anns), "image_id": image["id"],
                         "category_id": int(rng.choice(cat_ids[:4])), "bbox": [float(x), float(y), float(w), float(h)],
                         "area": float(w * h * rng.uniform(0.4, 1.0)), "iscrowd": int(rng.uniform() < 0.15)})
    for a in anns:  # two or three jittered copies per gt, some sharing box and score
        for _ in range(int(rng.integers(0, 4))):
            box = [v + float(rng.normal(0, 4)) for v in a["bbox"]] if rng.uniform() < 0.7 else list(a["bbox"])
            cat = a["category_id"] if a["category_id"] != 14 else 2
            dets.append({"image_id": a["image_id"], "category_id": cat, "bbox": box,
                         "score": round(float(rng.uniform()), 1)})
    for image in images[2:]:  # the first two have no detections
        for _ in range(int(rng.integers(0, 12))):
            x, y = rng.uniform(0, 250, 2)
            w, h = np.exp(rng.uniform(np.log(3), np.log(200), 2))
            dets.append({"image_id": image["id"], "category_id": int(rng.choice([2, 5, 9, 30])),
                         "bbox": [float(x), float(y), float(w), float(h)], "score": round(float(rng.uniform()), 1)})
    crowded = next(a for a in anns if not a["iscrowd"])
    dets += [{"image_id": crowded["image_id"], "category_id": crowded["category_id"],
              "bbox": [v + float(rng.normal(0, 6)) for v in crowded["bbox"]], "score": round(float(rng.uniform()), 1)}
             for _ in range(130)]
    order = rng.permutation(len(anns))
    gt = {"images": images, "annotations": [anns[k] for k in order],
          "categories": [{"id": c, "name": str(c)} for c in rng.permutation(cat_ids).tolist()]}
    return gt, [dets[k] for k in rng.permutation(len(dets))]


@pytest.mark.parametrize("seed", range(6))
def test_array_path_equals_pycocotools_and_stock_faster_coco_eval(seed):
    """The default backend builds faster-coco-eval's inputs from arrays: its precision/recall arrays must be
    bitwise those of the stock faster-coco-eval path (loadRes + per-annotation preparation), and its 12 stats and
    per-class AP50 those of pycocotools to 1e-12 (the two accumulates divide differently: pycocotools adds an
    epsilon to tp + fp, so single precision values can differ in the last bit)."""
    gt, dets = random_coco(seed)
    ours = _run_cocoeval(gt, dets, "faster-coco-eval")
    reference = _run_cocoeval(gt, dets, "pycocotools")
    gt_coco = coco_from_dict(gt, "faster-coco-eval")
    stock = faster_coco_eval.COCOeval_faster(gt_coco, gt_coco.loadRes([dict(d) for d in dets]), iouType="bbox")
    stock.evaluate()
    stock.accumulate()
    stock.summarize()
    for key in ("precision", "recall", "scores"):
        np.testing.assert_array_equal(ours.eval[key], stock.eval[key])
    assert list(ours.stats) == list(stock.stats)
    assert list(ours.stats) == pytest.approx(list(reference.stats), rel=0, abs=1e-12)
    np.testing.assert_array_equal(ours.eval["recall"], reference.eval["recall"])
    np.testing.assert_allclose(ours.eval["precision"], reference.eval["precision"], rtol=0, atol=1e-12)
    assert list(per_class_ap50(ours)) == list(per_class_ap50(reference)) == [2, 5, 9, 14, 30]
    np.testing.assert_allclose(list(per_class_ap50(ours).values()), list(per_class_ap50(reference).values()),
                               rtol=0, atol=1e-12)
    assert np.isnan(per_class_ap50(ours)[30]) and 0 < ours.stats[0] < 1


def test_vectorised_box_iou_is_cocos_to_the_bit():
    """Random boxes, some touching or nested, some crowd gts: equal to pycocotools' bbIou, element for element."""
    rng = np.random.default_rng(0)
    dt = rng.uniform(0, 50, (40, 4)).round(rng.integers(0, 3))
    gt = np.concatenate([dt[:10], rng.uniform(0, 50, (15, 4))])
    gt[10, :2] = dt[0, :2] + dt[0, 2:]  # touching corner: IoU 0
    crowd = rng.uniform(size=len(gt)) < 0.3
    expected = pycocotools.mask.iou(dt, gt, crowd.astype(np.uint8))
    i, j = np.meshgrid(np.arange(len(dt)), np.arange(len(gt)), indexing="ij")
    got = _bbox_iou(dt[i.ravel()], gt[j.ravel()], crowd[j.ravel()]).reshape(len(dt), len(gt))
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("reverse", [False, True])
def test_exact_iou_tie_goes_to_the_gt_later_in_dataset_order(reverse):
    """The first detection overlaps two gts equally (IoU 9/11); COCO matches it to the later gt, which decides
    whether the second detection (IoU 1 vs 2/3) is a true positive at IoU 0.75: so the gts' dataset order,
    and with it the array path's grouping, shows in the stats."""
    anns = [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "area": 100, "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 1, "bbox": [2, 0, 10, 10], "area": 100, "iscrowd": 0}]
    gt = {"images": [{"id": 1, "width": 20, "height": 20}], "categories": [{"id": 1, "name": "a"}],
          "annotations": anns[::-1] if reverse else anns}
    dets = [{"image_id": 1, "category_id": 1, "bbox": [1, 0, 10, 10], "score": 0.9},
            {"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "score": 0.8}]
    ours = evaluate_detections(gt, dets)
    assert ours == pytest.approx(evaluate_detections(gt, dets, backend="pycocotools"), rel=0, abs=1e-12)
    assert ours["AP75"] == pytest.approx(51 / 101 if reverse else 1.0)  # reversed: recall 1/2 at precision 1
