"""The cost curves of ``python -m benchmark perf``: how the harness's costs grow with the size of their input.

- seconds per training epoch vs training images: real epochs of ``detr_loop`` (the suite's loop: shuffling,
  batching, finiteness checks, gradient clipping) on the first N images of one split, every detr variant;
- seconds per training step vs object queries: the detr family on the same batches;
- evaluator seconds vs detections: ours (faster-coco-eval) and pycocotools on ``synthetic_coco``, at a fixed
  number of detections per image (more detections = more images);
- ``tune`` trials per hour per suite, read from the committed Optuna studies (nothing is tuned here).

Each curve gets its log-log slope (cost ∝ size^slope; 1 = linear), and ``perf.md`` says from those slopes where
cost grows faster than linearly. Why it does is not measured here: the reasons given are the literature's or
likely ones, and say so.
"""
from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from benchmark import config as config_lib
from benchmark.perf.common import (EVALUATOR_REPEATS, CurveSettings, PerfOptions, PerfReport, detr_config,
                                   evaluator_seconds, synthetic_coco, sync_device, training_batches, training_split)
from benchmark.perf.models import training_step
from benchmark.registry import REGISTRY
from cvpdl.data.detection_split import DetectionSplit
from cvpdl.detection.training import DetrTrainConfig, detr_loop, step_losses

EPOCH = "seconds per epoch vs training images"
QUERIES = "seconds per step vs queries"
EVALUATOR = "evaluator seconds vs detections"
CURVE_SECTIONS = ("curves", "slopes")  # perf.md renders these as curve tables, not as item lists
SUPERLINEAR = 1.1  # a slope above this counts as faster than linear (a margin for timing noise)
SUBLINEAR = 0.9

# What each curve's points are, printed above its table.
HOW_MEASURED = {
    EPOCH: "One real epoch of the suite's training loop on the first N images of one split, one model per variant "
           "(a warm-up step first); seconds of the whole epoch.",
    QUERIES: "A fresh model per query count, 2 warm-up steps, then the mean of the timed steps on the same batches.",
    EVALUATOR: f"Best of {EVALUATOR_REPEATS} timings per size and backend, as the evaluator table; the detections "
               "per image are fixed, so more detections means more images.",
}
# Why a curve can grow faster than linearly: the literature's or a likely account, never measured by perf (perf.md
# prints each under that heading).
LIKELY_CAUSE = {
    EPOCH: "an epoch is N ÷ batch identical steps, so linear is expected; faster growth would likely come from "
           "memory effects (the image array and optimiser state leaving the caches) or a busy shared CPU.",
    QUERIES: "in the literature, the matching's cost matrix grows as queries × targets and its assignment is cubic "
             "in the matrix size in the worst case (Kuhn–Munkres; Crouse, 2016, for scipy's linear_sum_assignment), "
             "and self-attention among the queries is quadratic in their number (Vaswani et al., 2017).",
    EVALUATOR: "in pycocotools' design, COCOeval sorts each category's detections by score before accumulating "
               "precision (n log n) and builds a detections × ground-truth IoU matrix per image and category.",
}


def loglog_slope(x, y) -> float:
    """Least-squares slope of log y against log x, the exponent k of y ∝ x^k; NaN with fewer than two distinct
    positive x (non-positive or non-finite points are left out)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    keep = np.isfinite(x) & np.isfinite(y) & (x > 0) & (y > 0)
    if np.unique(x[keep]).size < 2:
        return float("nan")
    return float(np.polyfit(np.log(x[keep]), np.log(y[keep]), 1)[0])


def _point(report: PerfReport, curve: str, series: str, x: float, x_unit: str, value: float, unit: str,
           note: str = "") -> None:
    report.add("curves", f"{curve}: {series} at {x:g} {x_unit}", value, unit, note, curve=curve, series=series,
               x=float(x), x_unit=x_unit)


def _variants(settings: CurveSettings) -> list[str]:
    return list(settings.variants or REGISTRY.method_names("detr"))


def epoch_seconds_vs_images(report: PerfReport, cfg: dict, split: DetectionSplit, device: torch.device,
                            settings: CurveSettings) -> None:
    """Each variant trains one epoch on the first N images of ``split`` for every N, one model per variant (a
    warm-up step first, so the first size does not pay for first-call set-up)."""
    train_cfg = config_lib.section_config(cfg, "train", DetrTrainConfig)
    for name in tqdm(_variants(settings), desc="epoch vs images", unit="model"):
        torch.manual_seed(0)
        parts = REGISTRY.build(REGISTRY.method("detr", name), cfg).parts(len(split.cat_ids))
        model = parts.model.to(device)
        generator = torch.Generator().manual_seed(0)

        def train_epoch(images: DetectionSplit) -> None:
            loop = detr_loop(model, images, train_cfg, generator)
            loop.train_one_epoch(step_losses(model, parts.criterion, images, generator, device))
        train_epoch(split.head(train_cfg.batch_size))
        for n in sorted(settings.epoch_images):
            sync_device(device)
            start = time.perf_counter()
            train_epoch(split.head(n))
            sync_device(device)
            _point(report, EPOCH, name, n, "training images", time.perf_counter() - start, "s",
                   f"one real epoch, batch {train_cfg.batch_size} ({n // train_cfg.batch_size} steps)")


def step_seconds_vs_queries(report: PerfReport, cfg: dict, split: DetectionSplit, device: torch.device,
                            settings: CurveSettings) -> None:
    """Each variant at every query count: a fresh model, 2 warm-up steps, then ``query_steps`` timed steps on the
    same batches of ``split`` for every count."""
    batches = training_batches(split, cfg["train"]["batch_size"], 2 + settings.query_steps, device)
    num_classes = len(split.cat_ids)
    for name in tqdm(_variants(settings), desc="step vs queries", unit="model"):
        for queries in settings.queries:
            torch.manual_seed(0)
            step, _ = training_step(name, {**cfg, "model": {**cfg["model"], "num_queries": queries}}, num_classes,
                                    device)
            for images, targets in batches[:2]:
                step(images, targets)
            sync_device(device)
            start = time.perf_counter()
            for images, targets in batches[2:]:
                step(images, targets)
            sync_device(device)
            _point(report, QUERIES, name, queries, "queries", (time.perf_counter() - start) / settings.query_steps,
                   "s", f"batch {cfg['train']['batch_size']}, mean of {settings.query_steps} steps")


def evaluator_seconds_vs_detections(report: PerfReport, settings: CurveSettings) -> None:
    """Both backends per size on the same synthetic ground truth and detections, timed as the evaluator table."""
    per_image = settings.detections_per_image
    for detections in tqdm(settings.detections, desc="evaluator vs detections", unit="size"):
        gt, dt = synthetic_coco(images=max(1, detections // per_image), detections_per_image=per_image)
        for backend in ("faster-coco-eval", "pycocotools"):
            _point(report, EVALUATOR, backend, len(dt), "detections", evaluator_seconds(gt, dt, backend)[0], "s",
                   f"{len(gt['images'])} images × {per_image} detections, best of {EVALUATOR_REPEATS}")


def study_trials(database: Path) -> pd.DataFrame:
    """Every trial of every study in an Optuna SQLite file: study, number, state, duration (a Timedelta). Read
    from a copy: opening a storage may write schema rows, and the committed file must stay as it is."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with tempfile.TemporaryDirectory() as scratch:
        copy = Path(scratch) / database.name
        shutil.copyfile(database, copy)
        storage = optuna.storages.RDBStorage(f"sqlite:///{copy}")
        frames = [optuna.load_study(study_name=name, storage=storage)
                  .trials_dataframe(attrs=("number", "state", "duration")).assign(study=name)
                  for name in optuna.study.get_all_study_names(storage)]
        storage.engine.dispose()
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["study", "state", "duration"])


def tune_trials_per_hour(report: PerfReport, results_dir: Path) -> None:
    """Completed trials per hour of trial time, per suite (gaps between trials, e.g. a paused study, excluded)."""
    for spec in REGISTRY.suites():
        database = results_dir / spec.name / "tuning" / "optuna.db"
        item, labels = f"{spec.name} tune trials per hour", {"suite": spec.name, "quantity": "tune trials per hour"}
        if not database.is_file():
            report.add("tuning", item, float("nan"), "trials/h", f"no study at {database}", **labels)
            continue
        trials = study_trials(database)
        seconds = trials["duration"].dt.total_seconds()
        completed = int((trials["state"] == "COMPLETE").sum())
        report.add("tuning", item, completed / seconds.sum() * 3600, "trials/h",
                   f"{completed} completed of {len(trials)} trials in {seconds.sum() / 3600:.2f} h of trial time, "
                   f"median {seconds.median():.0f} s a trial; {database} (as committed, on the machine that tuned)",
                   **labels)


def add_slopes(report: PerfReport) -> None:
    """One ``slopes`` row per (curve, series) of the curve rows."""
    points = report.frame()
    points = points[points["section"] == "curves"]
    for (curve, series), line in points.groupby(["curve", "series"], sort=False):
        report.add("slopes", f"{curve}: {series}", loglog_slope(line["x"], line["value"]), "log-log slope",
                   f"fit over {len(line)} points, {line['x'].min():g}–{line['x'].max():g} "
                   f"{line['x_unit'].iloc[0]}", curve=curve, series=series)


def cost_curves(report: PerfReport, options: PerfOptions, device: torch.device, cache_dir: Path) -> None:
    """Every curve, its slopes, and the tuning rates, into ``report``."""
    cfg, settings = detr_config(), options.curve_settings
    # one split for both training curves: generating canvases costs more than the tiny curves themselves
    images = max([*settings.epoch_images, cfg["train"]["batch_size"] * (2 + settings.query_steps)])
    split = training_split(cfg, images, cache_dir)
    epoch_seconds_vs_images(report, cfg, split, device, settings)
    step_seconds_vs_queries(report, cfg, split, device, settings)
    evaluator_seconds_vs_detections(report, settings)
    add_slopes(report)
    tune_trials_per_hour(report, options.results_dir)


def growth(slope: float) -> str:
    if not np.isfinite(slope):
        return "not fitted"
    return "faster than linear" if slope > SUPERLINEAR else "sublinear" if slope < SUBLINEAR else "about linear"


def curves_markdown(frame: pd.DataFrame) -> list[str]:
    """perf.md's curve sections: per curve a table (x by series) and its slopes, then where cost grows faster
    than linearly, from the slopes, with the literature's or a likely reason marked as such."""
    if "curve" not in frame or not (frame["section"] == "curves").any():
        return []
    points, slopes = frame[frame["section"] == "curves"], frame[frame["section"] == "slopes"]
    lines = ["", "## Cost curves", "",
             f"Log-log slope k of cost ∝ size^k (least squares over the points; 1 = linear, > {SUPERLINEAR} counted "
             f"as faster than linear, < {SUBLINEAR} as sublinear). Figure: `cost_curves.png`."]
    for curve, part in points.groupby("curve", sort=False):
        table = part.pivot_table(index="x", columns="series", values="value", sort=False)
        unit, x_unit = part["unit"].iloc[0], part["x_unit"].iloc[0]
        lines += ["", f"### {curve}", "", HOW_MEASURED.get(curve, ""), "",
                  f"| {x_unit} | " + " | ".join(f"{s} ({unit})" for s in table.columns) + " |",
                  "|---|" + "---|" * len(table.columns)]
        lines += [f"| {x:g} | " + " | ".join(f"{v:.4g}" for v in row) + " |" for x, row in table.iterrows()]
        fitted = slopes[slopes["curve"] == curve]
        lines += ["", "Slopes: " + "; ".join(f"{r.series} {r.value:.2f} ({growth(r.value)})"
                                             for r in fitted.itertuples()) + "."]
    fast = slopes[slopes["value"] > SUPERLINEAR]
    lines += ["", "### Where cost grows faster than linearly", ""]
    if fast.empty:
        lines.append(f"Nowhere in this run: every fitted slope is ≤ {SUPERLINEAR}.")
    for curve, part in fast.groupby("curve", sort=False):
        lines.append(f"- {curve}: " + ", ".join(f"{r.series} (slope {r.value:.2f})" for r in part.itertuples())
                     + ". Why (the literature's or a likely account, not measured here): "
                     + LIKELY_CAUSE.get(curve, "no account recorded."))
    if (slopes["value"] < SUBLINEAR).any():
        lines += ["", "Slopes below 1 likely mean a fixed cost per call (Python bookkeeping, kernel launches, the "
                      "evaluator's set-up) is still a large share at the small end — likely, not measured."]
    return lines
