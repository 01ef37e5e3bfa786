"""One split of a detection dataset: images, COCO ground truth, optional captions, the open-vocabulary split."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class DetectionSplit:
    """Images (in memory, uint8 HxWx3, or paths read on demand), COCO ground truth and captions.

    Class indices used by models are contiguous 0..C-1 in the order of ``coco["categories"]``; the evaluator
    always sees the dataset's own (possibly non-contiguous) category ids.
    """

    images: np.ndarray | list[Path]
    coco: dict
    captions: list[str] | None = None
    novel_cat_ids: list[int] = field(default_factory=list)

    def __post_init__(self):
        self.cat_ids = [c["id"] for c in self.coco["categories"]]
        self.class_names = [c["name"] for c in self.coco["categories"]]
        self.image_ids = [im["id"] for im in self.coco["images"]]
        index = {cid: i for i, cid in enumerate(self.cat_ids)}
        per_image: dict[int, list[dict]] = {i: [] for i in self.image_ids}
        for ann in self.coco["annotations"]:
            per_image[ann["image_id"]].append(ann)
        self._targets = []
        for image_id in self.image_ids:
            anns = [a for a in per_image[image_id] if not a.get("iscrowd", 0)]
            boxes = np.array([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                              for a in anns], dtype=np.float32).reshape(-1, 4)
            labels = np.array([index[a["category_id"]] for a in anns], dtype=np.int64)
            self._targets.append((boxes, labels))

    def __len__(self) -> int:
        return len(self.image_ids)

    @property
    def novel_classes(self) -> list[int]:
        """Contiguous class indices of the novel categories."""
        return [i for i, cid in enumerate(self.cat_ids) if cid in set(self.novel_cat_ids)]

    @property
    def base_classes(self) -> list[int]:
        return [i for i, cid in enumerate(self.cat_ids) if cid not in set(self.novel_cat_ids)]

    def image(self, i: int) -> np.ndarray:
        if isinstance(self.images, np.ndarray):
            return self.images[i]
        from PIL import Image

        return np.asarray(Image.open(self.images[i]).convert("RGB"))

    def subset(self, indices: list[int]) -> "DetectionSplit":
        """The images at ``indices`` (loaded into memory), their annotations and captions."""
        ids = {self.image_ids[i] for i in indices}
        coco = {**self.coco, "images": [self.coco["images"][i] for i in indices],
                "annotations": [a for a in self.coco["annotations"] if a["image_id"] in ids]}
        captions = [self.captions[i] for i in indices] if self.captions else None
        return DetectionSplit(np.stack([self.image(i) for i in indices]), coco, captions, self.novel_cat_ids)

    def head(self, n: int) -> "DetectionSplit":
        """The first ``n`` images (file paths stay unread), their annotations and captions."""
        if n >= len(self):
            return self
        ids = set(self.image_ids[:n])
        coco = {**self.coco, "images": self.coco["images"][:n],
                "annotations": [a for a in self.coco["annotations"] if a["image_id"] in ids]}
        return DetectionSplit(self.images[:n], coco, self.captions[:n] if self.captions else None, self.novel_cat_ids)

    def target(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Non-crowd ground-truth boxes (xyxy, absolute px) and contiguous class indices of image ``i``."""
        return self._targets[i]


def resized(split: DetectionSplit, size: int) -> DetectionSplit:
    """Every image resized to ``size`` × ``size`` (in memory) with its annotations scaled to match.

    Used to run the fixed-input ``ovd`` pipeline on real COCO-format data; the evaluator then sees the scaled
    ground truth, so AP is measured at that resolution.
    """
    import copy

    import torch
    import torch.nn.functional as F

    coco = copy.deepcopy(split.coco)
    images = np.zeros((len(split), size, size, 3), dtype=np.uint8)
    scale = {}
    for i, info in enumerate(coco["images"]):
        pixels = torch.from_numpy(split.image(i)).permute(2, 0, 1)[None].float()
        images[i] = F.interpolate(pixels, size=(size, size), mode="bilinear", antialias=True, align_corners=False
                                  )[0].permute(1, 2, 0).round().clamp(0, 255).byte().numpy()
        scale[info["id"]] = (size / info["width"], size / info["height"])
        info["width"] = info["height"] = size
    for ann in coco["annotations"]:
        sx, sy = scale[ann["image_id"]]
        x, y, w, h = ann["bbox"]
        ann["bbox"] = [x * sx, y * sy, w * sx, h * sy]
        ann["area"] = w * sx * h * sy
    return DetectionSplit(images, coco, split.captions, split.novel_cat_ids)
