import numpy as np

from cvpdl.data.captions import DIGIT_NAMES, concept_pool, make_caption, parse_concepts, prompt
from cvpdl.data.digits_world import DigitsWorldConfig, digit_pools, load_digits_split

CFG = DigitsWorldConfig()


def test_pools_are_disjoint_and_cover_the_digits():
    pools = digit_pools(CFG, 5000)
    sets = [set(p.tolist()) for p in pools.values()]
    assert sum(len(s) for s in sets) == 5000
    assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])


def test_generation_is_deterministic_and_cached(tmp_path):
    a = load_digits_split(CFG, "val", 20, seed=3, cache_dir=None)
    b = load_digits_split(CFG, "val", 20, seed=3, cache_dir=tmp_path)
    c = load_digits_split(CFG, "val", 20, seed=3, cache_dir=tmp_path)  # from the cache
    d = load_digits_split(CFG, "val", 20, seed=4, cache_dir=None)
    assert np.array_equal(a.images, b.images) and np.array_equal(b.images, c.images)
    assert a.coco == c.coco and a.captions == c.captions
    assert not np.array_equal(a.images, d.images)


def test_annotations_boxes_and_captions_agree():
    split = load_digits_split(CFG, "train", 50, seed=0, cache_dir=None)
    assert [c["name"] for c in split.coco["categories"]] == list(DIGIT_NAMES)
    for i in range(len(split)):
        boxes, labels = split.target(i)
        assert CFG.min_digits <= len(labels) <= CFG.max_digits
        assert (boxes[:, :2] >= 0).all() and (boxes[:, 2:] <= CFG.canvas_size).all()
        assert (boxes[:, 2:] > boxes[:, :2]).all()
        assert split.captions[i] == make_caption([DIGIT_NAMES[k] for k in labels])
        assert sorted(parse_concepts(split.captions[i], DIGIT_NAMES)) == sorted({DIGIT_NAMES[k] for k in labels})
    ann = split.coco["annotations"][0]
    assert ann["area"] == ann["bbox"][2] * ann["bbox"][3] and ann["iscrowd"] == 0
    assert split.novel_classes == [2, 5, 8] and split.base_classes == [0, 1, 3, 4, 6, 7, 9]


def test_single_digit_split():
    split = load_digits_split(CFG, "test_single", 10, seed=0, cache_dir=None, digits_range=(1, 1))
    assert all(len(split.target(i)[1]) == 1 for i in range(len(split)))


def test_captions_and_concept_parsing():
    assert make_caption(["seven", "three", "seven", "eight"]) == "a photo of a three, a pair of sevens and an eight"
    assert make_caption(["six", "six"]) == "a photo of a pair of sixes"
    assert make_caption(["one"] * 3) == "a photo of several ones"
    assert prompt("eight") == "a photo of an eight" == make_caption(["eight"])
    assert parse_concepts("a photo of a pair of sixes and a one", DIGIT_NAMES) == ["one", "six"]
    assert parse_concepts("someone and sevenfold", DIGIT_NAMES) == []
    assert concept_pool(["a photo of a nine", "a photo of a pair of ones"], DIGIT_NAMES) == ["one", "nine"]
