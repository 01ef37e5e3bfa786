"""The shared pretrained backbone of the detr suite: frozen batch norm, features computed once, its learning-rate
group, and the official one-detection-per-query post-processing."""
import numpy as np
import torch
from torch import nn

from cvpdl.data.detection_split import DetectionSplit
from cvpdl.detection.backbone import build_body
from cvpdl.detection.backbone_pretrain import extract_features, presence_labels
from cvpdl.detection.criterion import LossWeights
from cvpdl.detection.detr import Detr, DetrConfig
from cvpdl.detection.postprocess import PostProcess
from cvpdl.detection.training import DetrTrainConfig, FeatureSplit, batch_inputs, optimizer_for

CFG = DetrConfig(backbone_width=4, d_model=16, heads=2, encoder_layers=1, decoder_layers=1, d_ff=32, num_queries=3)


def tiny_split(n=3, size=32) -> DetectionSplit:
    images = np.random.default_rng(0).integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    coco = {"images": [{"id": i + 1, "width": size, "height": size} for i in range(n)],
            "annotations": [{"id": i + 1, "image_id": i + 1, "category_id": 1 + i % 2, "bbox": [4, 8, 16, 8],
                             "area": 128, "iscrowd": 0} for i in range(n)],
            "categories": [{"id": 1, "name": "zero"}, {"id": 2, "name": "one"}]}
    return DetectionSplit(images, coco)


def test_presence_labels_hand_values():
    got = presence_labels([np.array([2, 0, 2]), np.array([1])], 3)
    assert torch.equal(got, torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]))


def test_frozen_batch_norm_loads_the_pretrained_statistics_and_ignores_the_batch():
    torch.manual_seed(0)
    pretrained = build_body(4, frozen_norm=False)
    pretrained(torch.randn(8, 3, 16, 16))  # training mode: the running statistics move off their initial values
    frozen = build_body(4)
    frozen.load_state_dict(pretrained.state_dict())  # the same keys, num_batches_tracked dropped
    x = torch.randn(2, 3, 16, 16)
    expected = pretrained.eval()(x)
    # frozen: training mode still normalises with the loaded statistics
    torch.testing.assert_close(frozen.train()(x), expected, rtol=1e-5, atol=1e-5)
    assert {n.split(".")[0] for n, _ in frozen.named_parameters()} == {"0", "3", "6", "9", "12"}  # convolutions only


def test_a_detector_on_cached_features_computes_what_it_computes_on_images():
    torch.manual_seed(0)
    parts = Detr.build(CFG, 2, LossWeights())
    split = tiny_split()
    images, targets = batch_inputs(split, [0, 2], torch.device("cpu"))
    whole = parts.model.eval()(images)
    body = parts.model.encoder.backbone
    cached = FeatureSplit(split.images, split.coco, features=extract_features(body, split.images))
    features, cached_targets = batch_inputs(cached, [0, 2], torch.device("cpu"))
    assert features.shape == (2, 16, 4, 4)
    parts.model.encoder.backbone = nn.Identity()
    torch.testing.assert_close(parts.model(features)["boxes"][-1], whole["boxes"][-1], rtol=1e-5, atol=1e-6)
    # targets are scaled by the image's size (32 px), not the feature map's: box [4, 8, 20, 16] xyxy
    assert torch.allclose(cached_targets[0]["boxes"], torch.tensor([[12 / 32, 12 / 32, 16 / 32, 8 / 32]]))
    assert torch.equal(cached_targets[1]["labels"], targets[1]["labels"])


def test_backbone_learning_rate_group_and_freezing():
    model = Detr(CFG, 2)
    backbone = {id(p) for p in model.encoder.backbone.parameters()}
    frozen = optimizer_for(model, DetrTrainConfig(lr=1e-4, lr_backbone=0.0))
    assert [len(g["params"]) for g in frozen.param_groups] == [sum(1 for _ in model.parameters()) - len(backbone)]
    assert not any(p.requires_grad for p in model.encoder.backbone.parameters())
    model = Detr(CFG, 2)
    backbone = {id(p) for p in model.encoder.backbone.parameters()}
    trained = optimizer_for(model, DetrTrainConfig(lr=1e-4, lr_backbone=1e-5))
    assert [g["lr"] for g in trained.param_groups] == [1e-4, 1e-5]
    assert {id(p) for p in trained.param_groups[1]["params"]} == backbone


def test_one_detection_per_query_keeps_every_query_with_its_best_class():
    # softmax rows: query 0 → [e^2, e^0, e^0] / Σ, best class 0; query 1 → [e^0, e^1, e^3] / Σ, best real class 1
    logits = torch.tensor([[[2.0, 0.0, 0.0], [0.0, 1.0, 3.0]]])
    boxes = torch.tensor([[[0.5, 0.5, 0.5, 0.5], [0.25, 0.25, 0.5, 0.5]]])
    [(scores, labels, xyxy)] = PostProcess(focal=False, one_per_query=True)({"logits": [logits], "boxes": [boxes]},
                                                                            (10, 20), k=1)
    e = np.e
    assert labels.tolist() == [0, 1]
    torch.testing.assert_close(scores, torch.tensor([e ** 2 / (e ** 2 + 2), e / (1 + e + e ** 3)]))
    torch.testing.assert_close(xyxy, torch.tensor([[5.0, 2.5, 15.0, 7.5], [0.0, 0.0, 10.0, 5.0]]))
