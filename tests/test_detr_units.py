"""Golden-value tests of the DETR-family mechanics: matcher, losses, box ops, denoising, analyses."""
import itertools
import math

import numpy as np
import pytest
import torch

from cvpdl.analysis.detr_dynamics import (
    assignment_vector,
    count_modes,
    matching_instability,
    negative_entropy,
    positional_attention,
)
from cvpdl.detection.box_ops import cxcywh_to_xyxy, inverse_sigmoid
from cvpdl.detection.criterion import LossWeights, SetCriterion, weighted_cross_entropy
from cvpdl.detection.dab_detr import DabDetr
from cvpdl.detection.denoising import DenoisingConfig, attention_mask, build_dn_queries, noise_boxes
from cvpdl.detection.detr import Detr, DetrConfig
from cvpdl.detection.matcher import MatcherCosts, hungarian_match, match_cost_blocks, match_costs
from cvpdl.detection.position_encoding import image_position_encoding, sine_embed
from cvpdl.detection.postprocess import PostProcess
from cvpdl.detection.training import FitHistory


def random_case(seed, queries=5, targets=3, classes=4):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(1, queries, classes + 1, generator=g)
    boxes = torch.rand(1, queries, 4, generator=g) * 0.5 + 0.25
    t = {"labels": torch.randint(0, classes, (targets,), generator=g),
         "boxes": torch.rand(targets, 4, generator=g) * 0.5 + 0.25}
    return logits, boxes, t


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("focal", [False, True])
def test_hungarian_matches_brute_force(seed, focal):
    logits, boxes, t = random_case(seed)
    costs = MatcherCosts(focal=focal)
    if focal:
        logits = logits[..., :-1]
    cost = match_costs(logits[0], boxes[0], t["labels"], t["boxes"], costs)
    best = min(sum(cost[q, j].item() for j, q in enumerate(perm))
               for perm in itertools.permutations(range(5), 3))
    rows, cols = hungarian_match(logits, boxes, [t], costs)[0]
    assert sum(cost[r, c].item() for r, c in zip(rows, cols)) == pytest.approx(best, rel=1e-6)


@pytest.mark.parametrize("focal", [False, True])
def test_per_image_cost_blocks_equal_the_whole_batch_matrix_bitwise(focal):
    """The matcher computes each image's block of several layers at once; every entry must be exactly the
    whole-batch (B·Q × all targets) matrix's, so matching, and every trained weight, stay the same."""
    g = torch.Generator().manual_seed(0)
    sizes = [3, 0, 1, 6, 2, 5, 4]
    targets = [{"labels": torch.randint(0, 9, (n,), generator=g),
                "boxes": torch.rand(n, 4, generator=g) * 0.5 + 0.05} for n in sizes]
    logits = [torch.randn(7, 16, 10, generator=g)[:, 3:] * 3 for _ in range(3)]  # sliced, as DN-DETR's are
    boxes = [torch.rand(7, 16, 4, generator=g)[:, 3:] for _ in range(3)]
    costs = MatcherCosts(cost_class=2.0 if focal else 1.0, focal=focal)
    blocks = match_cost_blocks(logits, boxes, targets, costs)
    labels, gt = torch.cat([t["labels"] for t in targets]), torch.cat([t["boxes"] for t in targets])
    for layer, (x, b) in enumerate(zip(logits, boxes)):
        whole = match_costs(x.flatten(0, 1), b.flatten(0, 1), labels, gt, costs).view(7, 13, -1).split(sizes, -1)
        for i, n in enumerate(sizes):
            assert torch.equal(blocks[layer, i, :, :n], whole[i][i])


def test_matching_cost_weights_hand_value():
    logits = torch.tensor([[0.0, 0.0]])  # softmax: 0.5 for class 0
    pred = torch.tensor([[0.5, 0.5, 0.2, 0.2]])
    gt = torch.tensor([[0.5, 0.6, 0.2, 0.2]])  # L1 = 0.1; IoU = 0.1*... see below
    # xyxy: pred [0.4,0.4,0.6,0.6], gt [0.4,0.5,0.6,0.7]: inter 0.2*0.1=0.02, union 0.06, IoU 1/3; hull = area 0.06
    expected = 1 * -0.5 + 5 * 0.1 + 2 * -(1 / 3)
    assert match_costs(logits, pred, torch.tensor([0]), gt, MatcherCosts()).item() == pytest.approx(expected, abs=1e-6)


def test_criterion_hand_values():
    crit = SetCriterion(2, LossWeights(), MatcherCosts())
    logits = torch.tensor([[[10.0, -10.0, -10.0], [-10.0, -10.0, 10.0]]])  # q0 → class 0, q1 → no object
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.2], [0.1, 0.1, 0.1, 0.1]]])
    target = [{"labels": torch.tensor([0]), "boxes": torch.tensor([[0.5, 0.6, 0.2, 0.2]])}]
    losses, indices = crit({"logits": [logits], "boxes": [boxes]}, target)
    assert indices[0][0].tolist() == [0] and indices[0][1].tolist() == [0]
    assert losses["loss_bbox"].item() == pytest.approx(5 * 0.1, abs=1e-5)
    # GIoU = IoU − (hull − union)/hull = 1/3 − (0.06 − 0.06)/0.06 = 1/3
    assert losses["loss_giou"].item() == pytest.approx(2 * (1 - 1 / 3), abs=1e-5)
    assert losses["loss_ce"].item() == pytest.approx(0.0, abs=1e-6)  # both queries confidently right


def test_weighted_cross_entropy_matches_torch_forward_and_backward():
    """The CUDA path of the softmax class loss (NLLLoss has no deterministic CUDA kernel) equals torch's
    weighted cross entropy; hand case: logits 0 over 3 classes → −log(1/3) per query, weights (1, 0.1)."""
    weight = torch.tensor([1.0, 1.0, 0.1])
    flat = weighted_cross_entropy(torch.zeros(1, 2, 3), torch.tensor([[0, 2]]), weight)
    assert flat.item() == pytest.approx(math.log(3), rel=1e-6)  # (1·log 3 + 0.1·log 3) / 1.1
    logits = torch.randn(4, 30, 3, generator=torch.Generator().manual_seed(0), requires_grad=True)
    target = torch.randint(0, 3, (4, 30), generator=torch.Generator().manual_seed(1))
    ours = weighted_cross_entropy(logits, target, weight)
    ref = torch.nn.functional.cross_entropy(logits.transpose(1, 2), target, weight=weight)
    assert ours.item() == pytest.approx(ref.item(), rel=1e-6)
    torch.testing.assert_close(torch.autograd.grad(ours, logits)[0], torch.autograd.grad(ref, logits)[0])


def test_focal_class_loss_hand_values():
    crit = SetCriterion(2, LossWeights(), MatcherCosts(focal=True))
    logits = torch.zeros(1, 2, 2)
    target_classes = torch.tensor([[0, 2]])  # q1 unmatched
    # every entry p = 0.5: positive term α(1−p)^γ·log 2, negative (1−α)p^γ·log 2
    pos = 0.25 * 0.25 * math.log(2)
    neg = 0.75 * 0.25 * math.log(2)
    assert crit.class_loss(logits, target_classes, 1.0).item() == pytest.approx(pos + 3 * neg, rel=1e-5)
    # logit ±ln 3 → p = 0.75 / 0.25: positive at p 0.75: α(1/4)²·ln(4/3); negative at p 0.25: (1−α)(1/4)²·ln(4/3)
    logits = torch.tensor([[[math.log(3), 0.0], [0.0, -math.log(3)]]])
    expected = (0.25 * 0.0625 * math.log(4 / 3) + neg + neg + 0.75 * 0.0625 * math.log(4 / 3)) / 2.0
    assert crit.class_loss(logits, target_classes, 2.0).item() == pytest.approx(expected, rel=1e-5)


def test_box_ops():
    assert cxcywh_to_xyxy(torch.tensor([[0.5, 0.5, 0.2, 0.4]])).tolist() == [pytest.approx([0.4, 0.3, 0.6, 0.7])]
    assert inverse_sigmoid(torch.tensor([0.5])).item() == pytest.approx(0.0)
    assert torch.isfinite(inverse_sigmoid(torch.tensor([0.0, 1.0]))).all()


def test_dn_attention_mask():
    mask = attention_mask(groups=3, group_size=2, num_matching=4)
    pad = 6
    assert mask[pad:, :pad].all(), "matching queries must not see DN queries"
    assert not mask[pad:, pad:].any() and not mask[:pad, pad:].any()
    for g, h in itertools.product(range(3), range(3)):
        block = mask[2 * g:2 * g + 2, 2 * h:2 * h + 2]
        assert block.all() if g != h else not block.any()


def test_dn_noise_stays_within_lambda():
    boxes = torch.tensor([[0.5, 0.5, 0.2, 0.3]]).repeat(2000, 1)
    noised = noise_boxes(boxes, 0.4, torch.Generator().manual_seed(0))
    assert ((noised[:, 0] - 0.5).abs() <= 0.4 * 0.2 / 2 + 1e-6).all()
    assert ((noised[:, 1] - 0.5).abs() <= 0.4 * 0.3 / 2 + 1e-6).all()
    assert (noised[:, 2] >= 0.2 * 0.6 - 1e-6).all() and (noised[:, 2] <= 0.2 * 1.4 + 1e-6).all()
    assert (noised[:, 3] >= 0.3 * 0.6 - 1e-6).all() and (noised[:, 3] <= 0.3 * 1.4 + 1e-6).all()
    assert (noise_boxes(torch.tensor([[0.99, 0.01, 0.5, 0.5]]), 0.4) <= 1).all()


def test_dn_queries_and_label_flips():
    targets = [{"labels": torch.tensor([1, 2]), "boxes": torch.rand(2, 4) * 0.5 + 0.25},
               {"labels": torch.tensor([0]), "boxes": torch.rand(1, 4) * 0.5 + 0.25}]
    cfg = DenoisingConfig(groups=5, label_flip=0.2)
    labels, boxes, valid, indices, size = build_dn_queries(targets, cfg, 10, torch.Generator().manual_seed(0))
    assert size == 2 and labels.shape == (2, 10) and valid.sum().item() == 5 * 3
    assert (labels[1, 1::2] == 10).all(), "padding of the shorter image"
    assert indices[0][1].tolist() == [0, 1] * 5 and indices[1][0].tolist() == [0, 2, 4, 6, 8]
    many = [{"labels": torch.zeros(1000, dtype=torch.long), "boxes": torch.full((1000, 4), 0.5)}]
    flipped, *_ = build_dn_queries(many, DenoisingConfig(groups=1), 10, torch.Generator().manual_seed(1))
    assert 0.13 < (flipped != 0).float().mean().item() < 0.23  # p 0.2, minus flips back to the same class


def tiny_detector_batch():
    """A tiny detector config, two 32-px images and their targets (one and two boxes)."""
    cfg = DetrConfig(backbone_width=8, d_model=16, heads=2, encoder_layers=1, decoder_layers=2, d_ff=32,
                     num_queries=4)
    targets = [{"labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]])},
               {"labels": torch.tensor([0, 2]), "boxes": torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.7, 0.7, 0.2, 0.2]])}]
    return cfg, torch.randn(2, 3, 32, 32), targets


def test_dn_reconstruction_loss_needs_no_matching_and_models_run():
    cfg, images, targets = tiny_detector_batch()
    dn = DabDetr(cfg, 3, DenoisingConfig(groups=2)).train()
    out = dn(images, targets, torch.Generator().manual_seed(0))
    assert len(out["logits"]) == 2 and out["logits"][0].shape == (2, 4, 3)
    assert out["dn"]["logits"][0].shape == (2, 4, 3)  # 2 groups × 2 (largest image)
    losses, _ = SetCriterion(3, LossWeights(), MatcherCosts(focal=True))(out, targets)
    assert {"loss_dn_ce", "loss_dn_bbox", "loss_dn_giou", "loss_ce"} <= set(losses)
    sum(losses.values()).backward()
    assert out["cross_attn"][0] is None  # training: fused attention, no weights
    assert dn.eval()(images)["cross_attn"][0].shape == (2, 2, 4, 16)  # eval: the weights the analyses read
    detr = Detr(cfg, 3)
    assert detr(images)["logits"][-1].shape == (2, 4, 4)
    assert dn.eval()(images).get("dn") is None


def test_instability_and_entropy_metrics():
    prev = [assignment_vector((torch.tensor([0, 2]), torch.tensor([0, 1])), 4)]
    cur = [assignment_vector((torch.tensor([1, 2]), torch.tensor([0, 1])), 4)]
    assert prev[0].tolist() == [0, -1, 1, -1]
    assert matching_instability(prev, cur, num_gt=2) == 1.0  # q0 lost GT 0, q1 gained it: 2 changes / 2 GT
    uniform = torch.full((1, 1, 2, 4), 0.25)
    assert negative_entropy(uniform) == pytest.approx(-math.log(4))
    assert negative_entropy(torch.tensor([[1.0, 0.0]])) == pytest.approx(0.0, abs=1e-9)


def test_positional_attention_and_modes():
    maps = positional_attention(torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 0.0], [0.0, 0.0]]), heads=1)
    e = math.exp(1 / math.sqrt(2))
    assert maps[0].tolist() == pytest.approx([e / (e + 1), 1 / (e + 1)])
    two_peaks = np.zeros((6, 6))
    two_peaks[1, 1], two_peaks[4, 4], two_peaks[4, 0] = 1.0, 0.8, 0.1
    assert count_modes(two_peaks) == 2  # the 0.1 bump is below half of the maximum
    assert count_modes(np.ones((4, 4))) == 0  # flat: no strict maximum


def test_sine_position_encodings_share_one_space():
    pe = image_position_encoding(2, 2, 8)
    assert pe.shape == (4, 8)
    cell = torch.tensor([[0.5, 1.0]])  # (y, x) of cell (row 0, col 1): (i + 1) / n, as the official cumsum places it
    assert torch.allclose(sine_embed(cell, 4), pe[1:2], atol=1e-5)


def test_image_position_encoding_temperature_hand_values():
    # cell (0, 0) of a 2 × 2 grid sits at y = x = 1/2 → angle π / T^(2⌊i/2⌋/4) for features i = 0..3
    for temperature in (20.0, 10000.0):
        angle = math.pi / math.sqrt(temperature)
        expected = [0.0, -1.0, math.sin(angle), math.cos(angle)] * 2
        assert image_position_encoding(2, 2, 8, temperature)[0].tolist() == pytest.approx(expected, abs=1e-5)
    cfg = DetrConfig(backbone_width=8, d_model=8, heads=2, encoder_layers=1, decoder_layers=1, d_ff=16, num_queries=2)
    assert DabDetr(cfg, 3).encoder.pe_temperature == 20.0 and Detr(cfg, 3).encoder.pe_temperature == 10000.0


def test_dn_class_loss_scores_only_real_targets():
    """Image 0 has one box, image 1 two: one padding slot per group, which has no target and adds no loss."""
    crit = SetCriterion(2, LossWeights(), MatcherCosts(focal=True))
    targets = [{"labels": torch.tensor([0]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]])},
               {"labels": torch.tensor([1, 0]), "boxes": torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.7, 0.7, 0.2, 0.2]])}]
    indices = [(torch.tensor([0, 2]), torch.tensor([0, 0])), (torch.tensor([0, 1, 2, 3]), torch.tensor([0, 1, 0, 1]))]
    pad = torch.full((1, 4), 0.5)
    gt_boxes = torch.stack([torch.cat([targets[0]["boxes"], pad]).repeat(2, 1), targets[1]["boxes"].repeat(2, 1)])
    outputs = {"logits": [torch.zeros(2, 3, 2)], "boxes": [torch.rand(2, 3, 4) * 0.5 + 0.25],
               "dn": {"logits": [torch.zeros(2, 4, 2)], "boxes": [gt_boxes], "targets": targets,
                      "indices": indices, "groups": 2}}
    losses, _ = crit(outputs, targets)
    # p = 0.5 everywhere: each real DN query has one positive and one negative class; 6 real queries / (3 boxes × 2)
    pos, neg = 0.25 * 0.25 * math.log(2), 0.75 * 0.25 * math.log(2)
    assert losses["loss_dn_ce"].item() == pytest.approx(pos + neg, rel=1e-5)
    assert losses["loss_dn_bbox"].item() == pytest.approx(0.0, abs=1e-6)


def test_dab_content_queries_follow_the_official_code():
    cfg = DetrConfig(backbone_width=8, d_model=16, heads=2, encoder_layers=1, decoder_layers=2, d_ff=32,
                     num_queries=4)
    dab, dn = DabDetr(cfg, 3), DabDetr(cfg, 3, DenoisingConfig(groups=2))
    assert dab.label_embed is None and dab._matching_content((1, 4), "cpu").abs().sum() == 0  # DAB: zeros
    content = dn._matching_content((1, 4), "cpu")  # DN: "unknown" label embedding, indicator 0
    assert torch.equal(content[0, 0, :-1], dn.label_embed.weight[3]) and (content[..., -1] == 0).all()
    assert dab.layers[0].ca_q_pos is not None and dab.layers[1].ca_q_pos is None  # first-layer positional terms
    assert inverse_sigmoid(torch.tensor([0.0])).item() == pytest.approx(math.log(1e-3 / 1), rel=1e-6)


def test_dab_box_keeps_the_gradient_of_the_previous_refinement_and_the_queries_do_not():
    """Official ``ref_points`` / ``reference_points.detach()``: layer 1's queries read layer 0's refined anchor
    detached (its output has no gradient to the box head, which only refines), while the anchor layer 1's box is
    refined from keeps the gradient of that refinement."""
    cfg = DetrConfig(backbone_width=8, d_model=16, heads=2, encoder_layers=1, decoder_layers=2, d_ff=32,
                     num_queries=4)
    torch.manual_seed(0)
    model = DabDetr(cfg, 3).train()
    with torch.no_grad():
        for p in model.box_head.parameters():
            p.normal_(0, 0.3)
    g = torch.Generator().manual_seed(0)
    tgt, memory, pos = (torch.randn(2, n, 16, generator=g) for n in (4, 6, 6))
    hidden, references, _ = model.decode(tgt, torch.randn(2, 4, 4, generator=g), memory, pos)
    head = list(model.box_head.parameters())
    assert all(g is None for g in torch.autograd.grad(hidden[1].sum(), head, allow_unused=True))
    assert all(g.abs().sum() > 0 for g in torch.autograd.grad(references[1].sum(), head))
    assert len(references) == len(hidden) == 2


def test_dropout_is_deterministic_under_the_seed_and_off_in_eval():
    cfg = DetrConfig(backbone_width=8, d_model=16, heads=2, encoder_layers=1, decoder_layers=2, d_ff=32,
                     num_queries=4)
    images = torch.randn(2, 3, 32, 32)
    runs = []
    for _ in range(2):
        torch.manual_seed(3)
        model = Detr(cfg, 3).train()
        runs.append(model(images)["logits"][-1])
    assert torch.equal(runs[0], runs[1])
    model.eval()
    assert torch.equal(model(images)["logits"][-1], model(images)["logits"][-1])
    assert not torch.allclose(model(images)["logits"][-1], runs[1])  # dropout 0.1 was active in training


def test_every_variant_builds_model_criterion_and_postprocess_with_one_forward_signature():
    cfg, images, targets = tiny_detector_batch()
    detr, dab = Detr.build(cfg, 3, LossWeights()), DabDetr.build(cfg, 3, LossWeights())
    dn = DabDetr.build(cfg, 3, LossWeights(), denoising=DenoisingConfig(groups=2))
    assert detr.criterion.costs == MatcherCosts(cost_class=1.0)  # official set_cost_class: 1 (DETR), 2 (DAB, DN)
    assert dab.criterion.costs == dn.criterion.costs == MatcherCosts(cost_class=2.0, focal=True)
    assert not detr.postprocess.focal and dab.postprocess.focal and dn.postprocess.focal
    for parts in (detr, dab, dn):
        losses, _ = parts.criterion(parts.model.train()(images, targets, torch.Generator().manual_seed(0)), targets)
        assert ("loss_dn_ce" in losses) == (parts is dn)
        detections = parts.postprocess(parts.model.eval()(images), (32, 32), 5)
        assert len(detections) == 2 and detections[0][0].shape == (5,) and detections[0][2].shape == (5, 4)


def test_registered_variants_build_what_the_suite_and_perf_train():
    from benchmark.plan import RunOptions, resolve
    from benchmark.registry import REGISTRY
    from benchmark.suites import detr  # noqa: F401  (registers the suite)

    _, methods, cfg = resolve(RunOptions(suite="detr", profile="quick"))
    costs = {m.name: REGISTRY.build(m, cfg).parts(10).criterion.costs for m in methods}
    assert {name: (c.cost_class, c.focal) for name, c in costs.items()} == \
        {"detr": (1.0, False), "dab_detr": (2.0, True), "dn_dab_detr": (2.0, True)}


def test_postprocess_top_k_over_queries_and_classes():
    logits = torch.tensor([[[3.0, 0.0, 6.0], [0.0, 4.0, -5.0]]])  # softmax: the last column is "no object"
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.4], [0.25, 0.25, 0.5, 0.5]]])
    scores, labels, xyxy = PostProcess(focal=False)({"logits": [logits], "boxes": [boxes]}, (10, 20), 2)[0]
    p0, p1 = logits[0, 0].softmax(-1), logits[0, 1].softmax(-1)
    assert scores.tolist() == pytest.approx([p1[1].item(), p0[0].item()]) and labels.tolist() == [1, 0]
    assert xyxy.tolist() == [pytest.approx([0.0, 0.0, 10.0, 5.0]), pytest.approx([8.0, 3.0, 12.0, 7.0])]
    scores, labels, xyxy = PostProcess(focal=True)({"logits": [logits], "boxes": [boxes]}, (10, 20), 1)[0]
    assert scores.tolist() == pytest.approx([1 / (1 + math.exp(-6))]) and labels.tolist() == [2]  # a class here
    assert xyxy.tolist() == [pytest.approx([8.0, 3.0, 12.0, 7.0])]


def test_epochs_to_target_is_the_first_epoch_reaching_it():
    history = FitHistory(val=[{"AP50": 0.05}, {"AP50": 0.12}, {"AP50": 0.08}, {"AP50": 0.2}])
    assert history.epochs_to_target(0.1) == 2.0
    assert math.isnan(history.epochs_to_target(0.5))  # censored
