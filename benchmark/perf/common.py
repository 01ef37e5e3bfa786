"""What the parts of ``python -m benchmark perf`` share: its options, the report its sections add rows to, and the
inputs they time (the ``detr`` suite's config and training batches, a synthetic COCO evaluation)."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from benchmark import config as config_lib
from cvpdl.data.detection_split import DetectionSplit
from cvpdl.data.digits_world import DigitsWorldConfig, load_digits_split
from cvpdl.detection.training import batch_inputs
from cvpdl.evaluation.coco_eval import evaluate_detections


@dataclass(frozen=True)
class CurveSettings:
    """The sizes the cost curves (``benchmark.perf.curves``) are measured at; the defaults should keep them to
    about a minute on 2 free CPU cores (estimated from 1-thread timings of one variant on a busy machine)."""

    epoch_images: tuple[int, ...] = (256, 512, 1024, 2048)  # training images per timed epoch
    queries: tuple[int, ...] = (6, 12, 24, 48, 96)  # object queries of the timed training steps
    query_steps: int = 5  # timed steps per query count, after 2 warm-up steps
    detections: tuple[int, ...] = (1000, 5000, 25000, 50000)  # detections given to the evaluator
    detections_per_image: int = 50  # so more detections means more images, as a larger test split would
    variants: tuple[str, ...] | None = None  # detr variants timed; None: every registered one


@dataclass
class PerfOptions:
    results_dir: Path = Path("results")
    device: str = "auto"
    steps: int = 20  # timed training steps per model (after 3 warm-up steps)
    suites_profile: str = "quick"  # suites run here for wall time and peak memory; "none" skips them
    suite_jobs: int = 1  # --jobs of those runs
    cache_dir: Path | None = None
    threads: int | None = None
    curves: bool = True  # the cost curves of benchmark.perf.curves
    profile_steps: int = 5  # profiled training steps per model (benchmark.perf.profile), after 2 warm-up steps
    extras: tuple[str, ...] = ()  # optional sections of benchmark.perf.extras to run too (e.g. "compile", "ddp")
    curve_settings: CurveSettings = field(default_factory=CurveSettings)


@dataclass
class PerfReport:
    rows: list[dict] = field(default_factory=list)

    def add(self, section: str, item: str, value: float, unit: str, note: str = "", **labels) -> None:
        """One figure; ``labels`` become columns of perf.csv that a figure selects by (curve, series, x, suite)."""
        self.rows.append({"section": section, "item": item, "value": value, "unit": unit, "note": note, **labels})

    def get(self, section: str, item: str) -> float:
        hits = [r["value"] for r in self.rows if r["section"] == section and r["item"] == item]
        return hits[0] if hits else float("nan")

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows)


def sync_device(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def detr_config() -> dict:
    """The ``detr`` suite's default-profile config, as ``run`` resolves it."""
    from benchmark.plan import RunOptions, resolve

    return resolve(RunOptions(suite="detr"))[2]


def training_split(cfg: dict, images: int, cache_dir: Path) -> DetectionSplit:
    """The first ``images`` training canvases of the config's world (cached like the suite's)."""
    world = config_lib.section_config(cfg, "world", DigitsWorldConfig)
    return load_digits_split(world, "train", images, world.seed, cache_dir)


def training_batches(split: DetectionSplit, batch_size: int, count: int, device: torch.device) -> list:
    """The first ``count`` batches of ``split`` in order, on ``device``."""
    return [batch_inputs(split, list(range(i * batch_size, (i + 1) * batch_size)), device) for i in range(count)]


EVALUATOR_REPEATS = 5  # every evaluator timing of a perf run is the best of this many (one rule for every ratio)


def evaluator_seconds(gt: dict, detections: list[dict], backend: str) -> tuple[float, dict]:
    """(best wall seconds of ``EVALUATOR_REPEATS`` evaluations with ``backend``, its stats): the one timing rule of
    the evaluator table and the evaluator cost curve, so that their ratios at one size agree up to noise."""
    times = []
    for _ in range(EVALUATOR_REPEATS):
        start = time.perf_counter()
        stats = evaluate_detections(gt, detections, backend=backend)
        times.append(time.perf_counter() - start)
    return min(times), stats


def synthetic_coco(images: int = 500, detections_per_image: int = 50, seed: int = 0) -> tuple[dict, list[dict]]:
    """A COCO ground truth (1-8 boxes of 10 classes on 128-px images) and detections: each ground truth jittered
    two ways plus random boxes, scores uniform — enough true and false positives for every stat to move."""
    rng = np.random.default_rng(seed)
    gt = {"images": [{"id": i, "width": 128, "height": 128} for i in range(1, images + 1)],
          "categories": [{"id": c, "name": f"class{c}"} for c in range(1, 11)], "annotations": []}
    detections = []
    for image in gt["images"]:
        boxes = []
        for _ in range(int(rng.integers(1, 9))):
            x, y = rng.uniform(0, 96, 2)
            w, h = rng.uniform(4, 64, 2)
            box = [float(x), float(y), float(min(w, 128 - x)), float(min(h, 128 - y))]
            category = int(rng.integers(1, 11))
            gt["annotations"].append({"id": len(gt["annotations"]) + 1, "image_id": image["id"],
                                      "category_id": category, "bbox": box, "area": box[2] * box[3], "iscrowd": 0})
            boxes.append((box, category))
        for k in range(detections_per_image):
            if k < 2 * len(boxes):
                box, category = boxes[k // 2]
                box = [v + float(rng.normal(0, 3)) for v in box]
                category = category if rng.uniform() < 0.8 else int(rng.integers(1, 11))
            else:
                x, y = rng.uniform(0, 96, 2)
                box, category = [float(x), float(y), *map(float, rng.uniform(4, 64, 2))], int(rng.integers(1, 11))
            detections.append({"image_id": image["id"], "category_id": category, "bbox": box,
                               "score": float(rng.uniform())})
    return gt, detections
