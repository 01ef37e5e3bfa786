"""The kd suite's default data: two-digit numbers composed from disjoint MNIST digit pools."""
import numpy as np
import pytest

from cvpdl.data.digits_world import DigitsWorldConfig, digit_pools
from cvpdl.data.two_digit_numbers import TwoDigitConfig, _mnist_resized, load_two_digit_split

UNSHIFTED = TwoDigitConfig(digit_px=12, jitter=0)


@pytest.fixture(scope="module")
def digits():
    return _mnist_resized(UNSHIFTED.digit_px)


def test_each_half_is_a_digit_of_its_split_pool_with_the_labels_digit(digits):
    images, labels = load_two_digit_split(UNSHIFTED, "val", 60, seed=1, cache_dir=None)
    assert images.shape == (60, 12, 24, 1) and images.dtype == np.uint8
    pixels, digit_labels = (digits[0] * 255).round().astype(np.uint8), digits[1]
    pools = digit_pools(DigitsWorldConfig(seed=0), len(digit_labels))
    for image, label in zip(images[:10, ..., 0], labels[:10]):
        for half, digit in zip((image[:, :12], image[:, 12:]), (label // 10, label % 10)):
            same = np.flatnonzero((pixels == half).all(axis=(1, 2)))
            assert len(same), "each half is one resized MNIST digit, unshifted"
            assert all(digit_labels[i] == digit for i in same)
            assert set(same) <= set(pools["val"]) and not set(same) & (set(pools["train"]) | set(pools["test"]))


def test_classes_are_balanced_and_generation_is_deterministic_and_cached(tmp_path):
    cfg = TwoDigitConfig()
    images, labels = load_two_digit_split(cfg, "train", 250, seed=0, cache_dir=tmp_path)
    assert images.shape == (250, 16, 32, 1)
    assert set(np.bincount(labels, minlength=100)) == {2, 3}  # 250 = 2 × 100 + 50
    again = load_two_digit_split(cfg, "train", 250, seed=0, cache_dir=None)  # composed anew
    assert np.array_equal(images, again[0]) and np.array_equal(labels, again[1])
    assert len(list((tmp_path / "two_digit_numbers").glob("*.npz"))) == 1
    other = load_two_digit_split(cfg, "train", 250, seed=1, cache_dir=tmp_path)
    assert not np.array_equal(images, other[0])
    with pytest.raises(ValueError, match="unknown split"):
        load_two_digit_split(cfg, "holdout", 10, seed=0, cache_dir=None)


def test_composed_and_cached_arrays_have_the_same_layout(tmp_path):
    """Freshly composed numbers and the same numbers read back from the cache must reach torch with the same
    strides: a stride-0 channel axis made the conv kernels (and kd's numbers, at 1e-6) depend on the cache."""
    from benchmark.suites.kd import _to_tensor

    composed, _ = load_two_digit_split(TwoDigitConfig(), "test", 20, seed=2, cache_dir=tmp_path)
    cached, _ = load_two_digit_split(TwoDigitConfig(), "test", 20, seed=2, cache_dir=tmp_path)
    assert composed.strides == cached.strides == (512, 32, 1, 1)
    assert _to_tensor(composed).stride() == _to_tensor(cached).stride()
