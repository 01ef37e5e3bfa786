"""Real COCO-format data: ``ROOT/annotations/instances_<split>.json`` and images under ``ROOT/<split>/``.

Optional ``ROOT/annotations/captions_<split>.json`` (COCO captions) gives the image-text corpus of ``ovd``.
Nothing is ever downloaded: a missing file is an error that says where to put it.
"""
from __future__ import annotations

import json
from pathlib import Path

from cvpdl.data.detection_split import DetectionSplit
from cvpdl.errors import UserInputError

# OV-COCO (Bansal et al. 2018; used by RegionCLIP): 48 base / 17 novel categories.
OV_COCO_NOVEL = ("airplane", "bus", "cat", "dog", "cow", "elephant", "umbrella", "tie", "snowboard", "skateboard",
                 "cup", "knife", "cake", "couch", "keyboard", "sink", "scissors")
OV_COCO_BASE = ("person", "bicycle", "car", "motorcycle", "train", "truck", "boat", "bench", "bird", "horse", "sheep",
                "bear", "zebra", "giraffe", "backpack", "handbag", "suitcase", "frisbee", "skis", "kite", "surfboard",
                "bottle", "fork", "spoon", "bowl", "banana", "apple", "sandwich", "orange", "broccoli", "carrot",
                "pizza", "donut", "chair", "bed", "toilet", "tv", "laptop", "mouse", "remote", "microwave", "oven",
                "toaster", "refrigerator", "book", "clock", "vase", "toothbrush")

_REQUIRED = {"images": ("id", "width", "height"), "annotations": ("id", "image_id", "category_id", "bbox"),
             "categories": ("id", "name")}


def validate_coco(coco: dict, source: str) -> None:
    """Raise UserInputError naming the first structural problem of a COCO ground-truth dict."""
    if not isinstance(coco, dict):
        raise UserInputError(f"{source}: not a COCO object (expected a JSON object with images/annotations/categories)")
    for key, fields in _REQUIRED.items():
        if not isinstance(coco.get(key), list):
            raise UserInputError(f"{source}: missing list {key!r}")
        for i, entry in enumerate(coco[key]):
            missing = [f for f in fields if f not in entry]
            if missing:
                raise UserInputError(f"{source}: {key}[{i}] lacks {', '.join(missing)}")
    cat_ids = {c["id"] for c in coco["categories"]}
    image_ids = {im["id"] for im in coco["images"]}
    for ann in coco["annotations"]:
        if ann["category_id"] not in cat_ids:
            raise UserInputError(f"{source}: annotation {ann['id']} has unknown category_id {ann['category_id']}")
        if ann["image_id"] not in image_ids:
            raise UserInputError(f"{source}: annotation {ann['id']} refers to unknown image_id {ann['image_id']}")
        if len(ann["bbox"]) != 4 or ann["bbox"][2] < 0 or ann["bbox"][3] < 0:
            raise UserInputError(f"{source}: annotation {ann['id']} has a malformed bbox {ann['bbox']}")


def read_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise UserInputError(f"{what} not found: {path}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise UserInputError(f"{path}: not valid JSON ({err.msg} at line {err.lineno})") from None


def load_coco_split(root: str | Path, split: str, novel_names: tuple[str, ...] = OV_COCO_NOVEL) -> DetectionSplit:
    root = Path(root)
    ann_path = root / "annotations" / f"instances_{split}.json"
    coco = read_json(ann_path, f"COCO annotations (put them at ROOT/annotations/instances_{split}.json)")
    validate_coco(coco, str(ann_path))
    for ann in coco["annotations"]:
        ann.setdefault("area", ann["bbox"][2] * ann["bbox"][3])
        ann.setdefault("iscrowd", 0)
    image_dir = root / split
    paths = [image_dir / im.get("file_name", f"{im['id']:012d}.jpg") for im in coco["images"]]
    missing = next((p for p in paths if not p.is_file()), None)
    if missing is not None:
        raise UserInputError(f"image file not found: {missing} (images go under ROOT/{split}/)")
    captions = None
    cap_path = root / "annotations" / f"captions_{split}.json"
    if cap_path.is_file():
        by_image: dict[int, list[str]] = {}
        for ann in read_json(cap_path, "COCO captions").get("annotations", []):
            by_image.setdefault(ann["image_id"], []).append(ann["caption"])
        captions = [" ".join(by_image.get(im["id"], [])) for im in coco["images"]]
    novel = {c["id"] for c in coco["categories"] if c["name"] in set(novel_names)}
    return DetectionSplit(paths, coco, captions, novel_cat_ids=sorted(novel))
