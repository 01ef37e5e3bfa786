"""Real COCO-format data: a tiny dataset written to disk loads; missing or malformed files are clear errors."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from cvpdl.data.coco import OV_COCO_NOVEL, available_splits, load_coco_split, resolve_splits
from cvpdl.data.detection_split import resized
from cvpdl.errors import UserInputError


def write_dataset(root, annotations=None):
    (root / "annotations").mkdir(parents=True)
    (root / "val").mkdir()
    for i in (1, 2):
        Image.fromarray(np.full((40, 80, 3), 50 * i, np.uint8)).save(root / "val" / f"{i}.png")
    coco = {"images": [{"id": i, "file_name": f"{i}.png", "width": 80, "height": 40} for i in (1, 2)],
            "annotations": annotations if annotations is not None else [
                {"id": 1, "image_id": 1, "category_id": 18, "bbox": [8, 4, 16, 8]}],
            "categories": [{"id": 18, "name": "dog"}, {"id": 1, "name": "person"}]}
    (root / "annotations" / "instances_val.json").write_text(json.dumps(coco))
    (root / "annotations" / "captions_val.json").write_text(json.dumps(
        {"annotations": [{"image_id": 1, "caption": "a dog"}, {"image_id": 1, "caption": "a brown dog"}]}))


def test_loads_coco_split_with_ov_novel_names_and_captions(tmp_path):
    write_dataset(tmp_path)
    assert load_coco_split(tmp_path, "val").novel_cat_ids == []  # no OV split unless asked
    split = load_coco_split(tmp_path, "val", ("dog",))
    assert split.novel_cat_ids == [18]  # "dog" is OV-COCO novel
    assert split.captions == ["a dog a brown dog", ""]
    assert split.image(0).shape == (40, 80, 3)
    boxes, labels = split.target(0)
    assert boxes.tolist() == [[8, 4, 24, 12]] and labels.tolist() == [0]
    small = resized(split, 20)  # x scaled by 1/4, y by 1/2
    assert small.images.shape == (2, 20, 20, 3)
    assert small.coco["annotations"][0]["bbox"] == [2.0, 2.0, 4.0, 4.0]


@pytest.mark.parametrize("annotations, message", [
    ([{"id": 1, "image_id": 1, "category_id": 99, "bbox": [0, 0, 1, 1]}], "unknown category_id 99"),
    ([{"id": 1, "image_id": 7, "category_id": 18, "bbox": [0, 0, 1, 1]}], "unknown image_id 7"),
    ([{"id": 1, "image_id": 1, "category_id": 18, "bbox": [0, 0, -1, 1]}], "malformed bbox"),
    ([{"id": 1, "image_id": 1, "bbox": [0, 0, 1, 1]}], "lacks category_id"),
])
def test_malformed_annotations_are_named(tmp_path, annotations, message):
    write_dataset(tmp_path, annotations)
    with pytest.raises(UserInputError, match=message):
        load_coco_split(tmp_path, "val")


def test_missing_files_say_where_they_go(tmp_path):
    with pytest.raises(UserInputError, match="ROOT/annotations/instances_val.json"):
        load_coco_split(tmp_path, "val")
    write_dataset(tmp_path)
    (tmp_path / "val" / "2.png").unlink()
    with pytest.raises(UserInputError, match="image file not found"):
        load_coco_split(tmp_path, "val")


def test_novel_list_is_checked_against_the_categories(tmp_path):
    write_dataset(tmp_path)
    with pytest.raises(UserInputError, match="novel class.*airplane.*it has: dog, person.*coco_novel_classes"):
        load_coco_split(tmp_path, "val", OV_COCO_NOVEL)  # OV-COCO's 17 names on a 2-category dataset
    with pytest.raises(UserInputError, match="needs both novel and base"):
        load_coco_split(tmp_path, "val", ("dog", "person"))


def _annotation_files(root, *splits):
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    for split in splits:
        (root / "annotations" / f"instances_{split}.json").write_text("{}")


@pytest.mark.parametrize("splits, given, expected", [
    (("train2017", "val2017"), {}, ("train2017", "val2017", "val2017")),  # COCO: no annotated test → val
    (("train", "val", "test"), {}, ("train", "val", "test")),
    (("mytrain", "val2017", "train2017"), {"train": "mytrain"}, ("mytrain", "val2017", "val2017")),
])
def test_split_names_are_discovered_from_the_annotation_files(tmp_path, splits, given, expected):
    _annotation_files(tmp_path, *splits)
    resolved = resolve_splits(tmp_path, **given)
    assert (resolved.train, resolved.val, resolved.test) == expected
    assert resolved.test_is_val == (expected[2] == expected[1])
    assert available_splits(tmp_path) == sorted(splits)


@pytest.mark.parametrize("splits, given, message", [
    ((), {}, "holds no instances_<split>.json"),
    (("train2017", "val2017"), {"val": "val2014"}, "val split 'val2014' has no .*found splits: train2017, val2017"),
    (("train2014", "train2017", "val2017"), {}, "cannot tell the COCO train split.*coco_train_split"),
])
def test_split_names_that_do_not_resolve_are_one_clear_line(tmp_path, splits, given, message):
    _annotation_files(tmp_path, *splits)
    (tmp_path / "annotations").mkdir(exist_ok=True)
    with pytest.raises(UserInputError, match=message):
        resolve_splits(tmp_path, **given)


def _coco_folder(root, splits=("train", "val"), size=64):
    """A tiny COCO-format dataset: per split 8 images with one or two boxes of two categories and captions."""
    rng = np.random.default_rng(0)
    (root / "annotations").mkdir(parents=True)
    for split in splits:
        (root / split).mkdir()
        images, annotations, captions = [], [], []
        for i in range(1, 9):
            Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(root / split / f"{i}.png")
            images.append({"id": i, "file_name": f"{i}.png", "width": size, "height": size})
            for k in range(1 + i % 2):
                annotations.append({"id": 10 * i + k, "image_id": i, "category_id": 1 + k,
                                    "bbox": [4 + 20 * k, 8, 16, 20]})
            captions.append({"image_id": i, "caption": "a dog and a person" if i % 2 else "a dog"})
        categories = [{"id": 1, "name": "dog"}, {"id": 2, "name": "person"}]
        (root / "annotations" / f"instances_{split}.json").write_text(
            json.dumps({"images": images, "annotations": annotations, "categories": categories}))
        (root / "annotations" / f"captions_{split}.json").write_text(json.dumps({"annotations": captions}))


def test_detr_runs_on_a_coco_folder_with_discovered_splits_and_val_as_test(tmp_path, caplog):
    import benchmark.suites  # noqa: F401
    from benchmark.runner import RunOptions, run_suite

    _coco_folder(tmp_path / "data")
    metrics = run_suite(RunOptions(suite="detr", methods=["detr"], seeds=[0], profile="quick", data="coco",
                                   data_root=tmp_path / "data", results_dir=tmp_path / "r", cache_dir=tmp_path / "c",
                                   overrides=["train.epochs=1", "data.train_images=6", "data.coco_image_size=64"]))
    assert {"AP50"} <= set(metrics[metrics["split"] == "test"]["metric"])
    assert "no annotated test split: val is both val and test" in caplog.text

    # the README's snippet: the saved detector, reloaded and evaluated on a COCO file, gives the run's test numbers
    from benchmark.config import section_config
    from benchmark.registry import REGISTRY
    from cvpdl.data.coco import load_coco_split
    from cvpdl.data.detection_split import resized
    from cvpdl.detection.training import DetrTrainConfig, evaluate

    [path] = (tmp_path / "r" / "detr").glob("*/cells/*/detr_seed0/models/detector.pt")
    saved = torch.load(path, weights_only=False)
    cfg = saved["config"]
    split = resized(load_coco_split(tmp_path / "data", "val"), cfg["data"]["coco_image_size"])
    parts = REGISTRY.build(REGISTRY.method("detr", saved["method"]), cfg).parts(len(split.cat_ids))
    parts.model.load_state_dict(saved["state_dict"])
    stats, _ = evaluate(parts, split, section_config(cfg, "train", DetrTrainConfig), torch.device("cpu"))
    finals = metrics[(metrics["split"] == "test") & metrics["epoch"].isna()].set_index("metric")["value"]
    assert stats["AP50"] == finals["AP50"] and stats["AP"] == finals["AP"]


def test_ovd_refuses_a_novel_list_the_coco_data_lacks_before_training(tmp_path):
    import benchmark.suites  # noqa: F401
    from benchmark.runner import RunOptions, run_suite

    _coco_folder(tmp_path / "data")
    with pytest.raises(UserInputError, match="novel class.*airplane.*are not categories"):  # OV-COCO's default list
        run_suite(RunOptions(suite="ovd", methods=["clip_crop"], seeds=[0], profile="quick", data="coco",
                             data_root=tmp_path / "data", results_dir=tmp_path / "r", cache_dir=tmp_path / "c"))
    assert not (tmp_path / "c" / "clip").exists()  # nothing trained
