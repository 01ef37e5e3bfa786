import math

import pytest
import torch

from cvpdl.evaluation.classification import split_top1, topk_accuracy
from cvpdl.evaluation.stats import paired_test, summarize


def test_summary_golden_values():
    s = summarize([1.0, 2.0, 3.0])
    # t(0.975, df=2) = 4.302653; half-width = 4.302653 * 1 / sqrt(3)
    assert (s.mean, s.std, s.n) == (2.0, 1.0, 3)
    assert s.ci_low == pytest.approx(2 - 2.484138, abs=1e-5)
    assert s.ci_high == pytest.approx(2 + 2.484138, abs=1e-5)


def test_summary_of_one_value_has_no_spread():
    s = summarize([0.5])
    assert s.mean == 0.5 and s.n == 1 and math.isnan(s.std) and math.isnan(s.ci_low)


def test_paired_test_golden_values():
    t = paired_test([2.0, 3.0, 5.0], [1.0, 1.0, 2.0])  # differences 1, 2, 3
    assert t.mean_diff == pytest.approx(2.0)
    # t = 2 / (1 / sqrt 3) = 3.4641, df 2 → two-sided p = 0.07418
    assert t.p_value == pytest.approx(0.07418, abs=1e-4)
    assert t.n == 3


def test_topk_and_split_top1():
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1], [0.2, 0.3, 0.5], [0.5, 0.4, 0.1]])
    labels = torch.tensor([1, 1, 2, 1])
    assert topk_accuracy(logits, labels, 1) == pytest.approx(0.5)
    assert topk_accuracy(logits, labels, 2) == pytest.approx(1.0)
    split = split_top1(logits, labels, novel_classes=[2])
    assert split == {"base": pytest.approx(1 / 3), "novel": 1.0, "all": 0.5}
    assert math.isnan(topk_accuracy(logits[:0], labels[:0]))
