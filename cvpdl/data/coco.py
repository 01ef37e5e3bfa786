"""Real COCO-format data: ``ROOT/annotations/instances_<split>.json`` and images under ``ROOT/<split>/``.

Optional ``ROOT/annotations/captions_<split>.json`` (COCO captions) gives the image-text corpus of ``ovd``.
Nothing is ever downloaded: a missing file is an error that says where to put it. Split names are discovered from
the annotation files (``resolve_splits``), so a folder with ``instances_train.json``/``instances_val.json`` works
as it is; where there is no annotated test split (COCO's test2017 has no public boxes) val doubles as test.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from cvpdl.data.detection_split import DetectionSplit, resized
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


def available_splits(root: str | Path) -> list[str]:
    """The split names that have ``ROOT/annotations/instances_<split>.json``, sorted."""
    files = (Path(root) / "annotations").glob("instances_*.json")
    return sorted(p.name.removeprefix("instances_").removesuffix(".json") for p in files)


@dataclass(frozen=True)
class CocoSplits:
    train: str
    val: str
    test: str

    @property
    def test_is_val(self) -> bool:
        return self.test == self.val


def resolve_splits(root: str | Path, train: str = "", val: str = "", test: str = "") -> CocoSplits:
    """Split names: the given ones checked against the annotation files, the empty ones discovered (the only
    split whose name starts with ``train``/``val``/``test``; no test split → val is the test split)."""
    found = available_splits(root)
    if not found:
        raise UserInputError(f"{Path(root) / 'annotations'} holds no instances_<split>.json (COCO layout: "
                             "annotations/instances_train2017.json, annotations/instances_val2017.json, …)")

    def pick(given: str, role: str, fallback: str | None = None) -> str:
        if given:
            if given not in found:
                raise UserInputError(f"COCO {role} split {given!r} has no annotations/instances_{given}.json under "
                                     f"{root}; found splits: {', '.join(found)}")
            return given
        named = [s for s in found if s.startswith(role)]
        if len(named) == 1:
            return named[0]
        if not named and fallback:
            return fallback
        raise UserInputError(f"cannot tell the COCO {role} split among {', '.join(found)} under {root}; name it with "
                             f"--set data.coco_{role}_split=NAME")

    val_name = pick(val, "val")
    return CocoSplits(pick(train, "train"), val_name, pick(test, "test", fallback=val_name))


def novel_category_ids(coco: dict, novel_names: tuple[str, ...], source: str) -> list[int]:
    """Category ids of the open-vocabulary novel classes; every name must be a category, and base classes must
    remain."""
    names = {c["name"]: c["id"] for c in coco["categories"]}
    unknown = [n for n in novel_names if n not in names]
    if unknown:
        raise UserInputError(f"{source}: novel class(es) {', '.join(unknown)} are not categories of this dataset "
                             f"(it has: {', '.join(names)}); set the novel list with "
                             "--set data.coco_novel_classes=[name,...]")
    if not novel_names or len(set(novel_names)) == len(names):
        raise UserInputError(f"{source}: the open-vocabulary split needs both novel and base classes; "
                             f"got {len(set(novel_names))} novel of {len(names)} categories")
    return sorted(names[n] for n in set(novel_names))


def load_coco_split(root: str | Path, split: str, novel_names: tuple[str, ...] | None = None) -> DetectionSplit:
    """One split; ``novel_names`` (the OV split's novel classes, e.g. ``OV_COCO_NOVEL``) are checked and marked."""
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
    novel = novel_category_ids(coco, novel_names, str(ann_path)) if novel_names is not None else []
    return DetectionSplit(paths, coco, captions, novel_cat_ids=novel)


def load_coco_splits(root: str | Path, names: CocoSplits, image_size: int, sizes: dict[str, int],
                     novel_names: tuple[str, ...] | None = None) -> dict[str, DetectionSplit]:
    """``train``, ``val`` and ``test``: every file checked before anything trains; each split cut to its first
    ``sizes[role]`` images (the profile's budget, as on the digits world) and resized to ``image_size`` squares.
    Where the data has no test split, test is the same val images (``names.test_is_val``)."""
    by_name = {name: load_coco_split(root, name, novel_names)
               for name in dict.fromkeys((names.train, names.val, names.test))}
    return {role: resized(by_name[getattr(names, role)].head(sizes[role]), image_size)
            for role in ("train", "val", "test")}
