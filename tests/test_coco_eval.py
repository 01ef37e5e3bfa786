"""The common evaluator against hand-computed cases and against raw pycocotools."""
import contextlib
import io
import json

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from cvpdl.evaluation.coco_eval import BACKENDS, STAT_NAMES, evaluate_detections


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
