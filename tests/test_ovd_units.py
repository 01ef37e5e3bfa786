"""Golden-value tests of the ovd mechanics: losses, pseudo-labels, crops, RoIAlign geometry, score vs IoU."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from open_clip.loss import ClipLoss

from cvpdl.analysis.score_vs_iou import best_iou, jitter_boxes, score_iou_spearman
from cvpdl.ovd.clip_crop import crop_and_resize, crop_bounds
from cvpdl.ovd.clip_model import region_features
from cvpdl.ovd.losses import (distillation_kl, image_text_contrastive, multi_positive_cross_entropy,
                              region_concept_contrastive, same_caption_mask)
from cvpdl.ovd.regionclip import pseudo_label


def test_multi_positive_hand_value():
    logits = torch.tensor([[0.0, math.log(3.0), 0.0]])  # softmax = [0.2, 0.6, 0.2]
    one = multi_positive_cross_entropy(logits, torch.tensor([[False, True, False]]))
    two = multi_positive_cross_entropy(logits, torch.tensor([[True, True, False]]))
    assert one.item() == pytest.approx(-math.log(0.6))
    assert two.item() == pytest.approx(-(math.log(0.2) + math.log(0.6)) / 2)


def test_image_text_loss_equals_open_clip_cliploss_for_unique_captions():
    torch.manual_seed(0)
    img, txt = F.normalize(torch.randn(6, 8), dim=1), F.normalize(torch.randn(6, 8), dim=1)
    scale = torch.tensor(10.0)
    ours = image_text_contrastive(img, txt, scale, same_caption_mask([f"c{i}" for i in range(6)]))
    assert ours.item() == pytest.approx(ClipLoss()(img, txt, scale).item(), rel=1e-6)


def test_duplicate_captions_are_positives():
    mask = same_caption_mask(["a", "b", "a"])
    assert mask.tolist() == [[True, False, True], [False, True, False], [True, False, True]]
    emb = F.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]]), dim=1)
    # rows 0 and 2 share a caption: each has two positives with probability e^10 / (2 e^10 + 1) each
    with_dups = image_text_contrastive(emb, emb, torch.tensor(10.0), mask)
    row0 = -math.log(math.exp(10) / (2 * math.exp(10) + 1))
    row1 = -math.log(math.exp(10) / (math.exp(10) + 2))
    assert with_dups.item() == pytest.approx((2 * row0 + row1) / 3, rel=1e-5)


def test_region_concept_contrastive_hand_value():
    regions = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    concepts = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    loss = region_concept_contrastive(regions, concepts, torch.tensor([0, 0]), logit_scale=1.0)
    p_region = math.e / (math.e + 1)  # each region: concept 0 vs concept 1
    # concept 0 → both regions positive (uniform target over two equal logits): -log(1/2)
    expected = 0.5 * (-math.log(p_region) + -math.log(0.5))
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_distillation_kl_hand_value():
    student = torch.log(torch.tensor([[0.5, 0.5]]))
    teacher = torch.log(torch.tensor([[0.9, 0.1]]))
    expected = 0.9 * math.log(0.9 / 0.5) + 0.1 * math.log(0.1 / 0.5)
    assert distillation_kl(student, teacher).item() == pytest.approx(expected, rel=1e-5)
    assert distillation_kl(teacher, teacher).item() == pytest.approx(0.0, abs=1e-7)


def test_pseudo_label_threshold():
    concepts = torch.eye(3)
    regions = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])  # confident; uniform (max prob exactly 1/3)
    logits, labels, keep = pseudo_label(regions, concepts, temperature=0.01, threshold=0.5)
    assert labels[0].item() == 0 and keep.tolist() == [True, False]
    assert logits[0, 0].item() == pytest.approx(100.0)
    _, _, keep_low = pseudo_label(regions, concepts, temperature=0.01, threshold=0.1)
    assert keep_low.tolist() == [True, True]


def test_crop_bounds_and_crop_contents():
    assert crop_bounds([1.5, 2.2, 4.1, 5.0], 10, 8) == (1, 2, 5, 5)
    assert crop_bounds([-3, -1, 0.2, 0.1], 10, 8) == (0, 0, 1, 1)  # clipped, at least one pixel
    assert crop_bounds([9.5, 7.5, 12, 11], 10, 8) == (9, 7, 10, 8)
    image = torch.arange(80, dtype=torch.float32).view(1, 8, 10)
    crop = crop_and_resize(image, np.array([[2, 3, 4, 5]]), size=2)  # a 2x2 crop at size 2 is unchanged
    assert crop[0, 0].tolist() == [[32.0, 33.0], [42.0, 43.0]]


def test_roi_align_region_features_hand_check():
    """On a stride-16 map whose value is the x pixel coordinate of each cell centre (a linear ramp),
    aligned RoIAlign returns, per output bin, the x coordinate of the bin centre."""
    xs = torch.arange(8, dtype=torch.float32) * 16 + 8
    fmap = xs.view(1, 1, 1, 8).expand(1, 1, 8, 8).contiguous()
    out = region_features(fmap, [torch.tensor([[32.0, 0.0, 64.0, 64.0]])], side=2, stride=16)
    assert out.shape == (1, 1, 2, 2)
    assert out[0, 0, 0].tolist() == pytest.approx([40.0, 56.0])


def test_score_vs_iou_helpers():
    gt = np.array([[10, 10, 30, 30]], dtype=np.float32)
    assert best_iou(np.array([[10, 10, 30, 30], [20, 10, 40, 30]], np.float32), gt).tolist() == \
        pytest.approx([1.0, 1 / 3])
    jittered = jitter_boxes(gt, 50, 64, torch.Generator().manual_seed(0))
    assert jittered.shape == (50, 4) and (jittered >= 0).all() and (jittered <= 64).all()
    ious = best_iou(jittered, gt)
    assert ious.min() < 0.3 and ious.max() > 0.7  # proposals of every quality
    assert score_iou_spearman(np.array([1, 2, 3, 4.0]), np.array([0.1, 0.2, 0.4, 0.3])) == pytest.approx(0.8)
    assert math.isnan(score_iou_spearman(np.ones(4), np.arange(4.0)))
