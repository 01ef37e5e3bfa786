"""Cross-checks of the DETR-family pieces against third-party implementations on identical random inputs:
Hugging Face transformers (DETR / Deformable-DETR matchers and losses, DAB-DETR's decoder with our weights copied
in), torchvision's focal loss, and DN-DETR's noise and attention mask against their definition in the paper/code.
Models are built from configs only: nothing is downloaded."""
import pytest
import torch
from torchvision.ops import sigmoid_focal_loss

from cvpdl.detection.criterion import LossWeights, SetCriterion
from cvpdl.detection.dab_detr import DabDetr, DabOptions
from cvpdl.detection.denoising import attention_mask, noise_boxes
from cvpdl.detection.detr import DetrConfig
from cvpdl.detection.matcher import MatcherCosts, hungarian_match

hf_loss = pytest.importorskip("transformers.loss.loss_for_object_detection")
hf_deformable_loss = pytest.importorskip("transformers.loss.loss_deformable_detr")
hf_dab = pytest.importorskip("transformers.models.dab_detr.modeling_dab_detr")
from transformers import DabDetrConfig  # noqa: E402

CLASSES = 5


def random_batch(seed: int, layers: int = 3, batch: int = 4, queries: int = 7, focal: bool = False):
    """Per-layer logits and boxes, and targets with 0–4 boxes per image (one image always empty)."""
    g = torch.Generator().manual_seed(seed)
    width = CLASSES if focal else CLASSES + 1
    logits = [torch.randn(batch, queries, width, generator=g) * 2 for _ in range(layers)]
    boxes = [torch.rand(batch, queries, 4, generator=g) * 0.5 + 0.2 for _ in range(layers)]
    targets = []
    for i in range(batch):
        n = 0 if i == 0 else int(torch.randint(1, 5, (1,), generator=g))
        targets.append({"labels": torch.randint(0, CLASSES, (n,), generator=g),
                        "boxes": torch.rand(n, 4, generator=g) * 0.4 + 0.3})
    return logits, boxes, targets


def hf_targets(targets):
    return [{"class_labels": t["labels"], "boxes": t["boxes"]} for t in targets]


def hf_outputs(logits, boxes):
    aux = [{"logits": lg, "pred_boxes": bx} for lg, bx in zip(logits[:-1], boxes[:-1])]
    return {"logits": logits[-1], "pred_boxes": boxes[-1], "auxiliary_outputs": aux}


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("focal", [False, True])
def test_hungarian_matcher_equals_hugging_face(seed, focal):
    logits, boxes, targets = random_batch(seed, layers=1, focal=focal)
    costs = MatcherCosts(cost_class=2.0 if focal else 1.0, focal=focal)
    matcher = (hf_deformable_loss.DeformableDetrHungarianMatcher if focal else hf_loss.HungarianMatcher)(
        class_cost=costs.cost_class, bbox_cost=costs.cost_bbox, giou_cost=costs.cost_giou)
    theirs = matcher({"logits": logits[0], "pred_boxes": boxes[0]}, hf_targets(targets))
    ours = hungarian_match(logits[0], boxes[0], targets, costs)
    for (q, t), (hq, ht) in zip(ours, theirs):
        assert q.tolist() == hq.tolist() and t.tolist() == ht.tolist()


@pytest.mark.parametrize("seed", range(3))
def test_detr_losses_equal_hugging_face_image_loss(seed):
    logits, boxes, targets = random_batch(seed)
    ours, _ = SetCriterion(CLASSES, LossWeights(ce=1, bbox=1, giou=1), MatcherCosts())(
        {"logits": logits, "boxes": boxes}, targets)
    matcher = hf_loss.HungarianMatcher(class_cost=1, bbox_cost=5, giou_cost=2)
    theirs = hf_loss.ImageLoss(matcher, CLASSES, eos_coef=0.1, losses=["labels", "boxes"])(
        hf_outputs(logits, boxes), hf_targets(targets))
    for name in ("loss_ce", "loss_bbox", "loss_giou"):  # ours: summed over the layers; theirs: one key per layer
        total = sum(v for k, v in theirs.items() if k == name or k.startswith(name + "_"))
        assert ours[name].item() == pytest.approx(total.item(), rel=1e-5, abs=1e-6), name


@pytest.mark.parametrize("seed", range(3))
def test_focal_losses_equal_hugging_face_deformable_detr(seed):
    logits, boxes, targets = random_batch(seed, focal=True)
    ours, _ = SetCriterion(CLASSES, LossWeights(ce=1, bbox=1, giou=1), MatcherCosts(cost_class=2.0, focal=True))(
        {"logits": logits, "boxes": boxes}, targets)
    matcher = hf_deformable_loss.DeformableDetrHungarianMatcher(class_cost=2, bbox_cost=5, giou_cost=2)
    theirs = hf_deformable_loss.DeformableDetrImageLoss(matcher, CLASSES, focal_alpha=0.25,
                                                        losses=["labels", "boxes"])(
        hf_outputs(logits, boxes), hf_targets(targets))
    for name in ("loss_ce", "loss_bbox", "loss_giou"):
        total = sum(v for k, v in theirs.items() if k == name or k.startswith(name + "_"))
        assert ours[name].item() == pytest.approx(total.item(), rel=1e-5, abs=1e-6), name


def test_focal_class_loss_equals_torchvision():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 6, CLASSES, generator=g)
    target_classes = torch.randint(0, CLASSES + 1, (3, 6), generator=g)  # CLASSES = "no object": all-zero row
    onehot = torch.zeros(3, 6, CLASSES)
    for b, q in zip(*torch.nonzero(target_classes < CLASSES, as_tuple=True)):
        onehot[b, q, target_classes[b, q]] = 1
    crit = SetCriterion(CLASSES, LossWeights(), MatcherCosts(focal=True))
    expected = sigmoid_focal_loss(logits, onehot, alpha=0.25, gamma=2.0, reduction="sum") / 4.0
    assert crit.class_loss(logits, target_classes, 4.0).item() == pytest.approx(expected.item(), rel=1e-6)


# ---- DAB-DETR's decoder against transformers' dab_detr, our weights copied into theirs ----

def _hf_key(ours: str) -> str | None:
    """Our decoder's parameter names → transformers' ``DabDetrDecoder`` names."""
    renames = {"sa_q_content": "self_attn.self_attn_query_content_proj",
               "sa_q_pos": "self_attn.self_attn_query_pos_proj", "sa_k_content": "self_attn.self_attn_key_content_proj",
               "sa_k_pos": "self_attn.self_attn_key_pos_proj",
               "sa_v": "self_attn.self_attn_value_proj", "sa_out": "self_attn.self_attn.output_proj",
               "norm1": "self_attn.self_attn_layer_norm",
               "ca_q_content": "cross_attn.cross_attn_query_content_proj",
               "ca_q_pos": "cross_attn.cross_attn_query_pos_proj",
               "ca_k_content": "cross_attn.cross_attn_key_content_proj",
               "ca_k_pos": "cross_attn.cross_attn_key_pos_proj", "ca_v": "cross_attn.cross_attn_value_proj",
               "ca_q_sine": "cross_attn.cross_attn_query_pos_sine_proj", "ca_out": "cross_attn.cross_attn.output_proj",
               "norm2": "cross_attn.cross_attn_layer_norm", "ffn.linear1": "mlp.fc1", "ffn.linear2": "mlp.fc2",
               "ffn.norm": "mlp.final_layer_norm", "ffn.act": "mlp.activation_fn"}
    if ours.startswith("layers."):
        _, i, rest = ours.split(".", 2)
        module, param = rest.rsplit(".", 1)
        return f"layers.{i}.{renames[module]}.{param}"
    for prefix, theirs in (("decoder_norm.", "layernorm."), ("query_scale.", "query_scale."),
                           ("ref_point_head.", "ref_point_head."), ("ref_anchor_head.", "ref_anchor_head."),
                           ("box_head.", "bbox_embed.")):
        if ours.startswith(prefix):
            return theirs + ours[len(prefix):]
    return None  # encoder, anchors, class head: not part of the decoder


@pytest.mark.parametrize("seed", range(2))
def test_dab_decoder_equals_hugging_face(seed):
    d, heads, layers, queries, hw, batch = 32, 4, 3, 6, 20, 2
    cfg = DetrConfig(backbone_width=8, d_model=d, heads=heads, encoder_layers=1, decoder_layers=layers, d_ff=48,
                     num_queries=queries)
    torch.manual_seed(seed)
    ours = DabDetr(cfg, CLASSES, options=DabOptions()).eval()
    with torch.no_grad():  # non-zero Δ and PReLU slopes, so the anchor update and activation are exercised
        for p in ours.box_head.parameters():
            p.normal_(0, 0.3)
        for layer in ours.layers:
            layer.ffn.act.weight.uniform_(0.1, 0.5)
    hf_cfg = DabDetrConfig(hidden_size=d, decoder_attention_heads=heads, decoder_ffn_dim=48, decoder_layers=layers,
                           encoder_layers=1, dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
                           activation_function="prelu", num_queries=queries, use_pretrained_backbone=False)
    theirs = hf_dab.DabDetrDecoder(hf_cfg)
    theirs.bbox_embed = hf_dab.DabDetrMLP(d, d, 4, 3)
    state = {_hf_key(k): v for k, v in ours.state_dict().items() if _hf_key(k) is not None}
    assert set(state) == set(theirs.state_dict()), set(theirs.state_dict()) ^ set(state)
    theirs.load_state_dict(state)
    theirs.eval()

    g = torch.Generator().manual_seed(seed)
    tgt = torch.randn(batch, queries, d, generator=g)
    memory = torch.randn(batch, hw, d, generator=g)
    pos = torch.randn(batch, hw, d, generator=g)
    refpoints = torch.randn(batch, queries, 4, generator=g)
    with torch.no_grad():
        hidden, references, weights = ours.decode(tgt, refpoints, memory, pos)
        out = theirs(inputs_embeds=tgt, encoder_hidden_states=memory, memory_key_padding_mask=None,
                     object_queries=pos, query_position_embeddings=refpoints, output_attentions=True,
                     return_dict=True)
    torch.testing.assert_close(torch.stack(hidden), out.intermediate_hidden_states, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(torch.stack(references), out.reference_points, rtol=1e-4, atol=1e-5)
    for w, hw_w in zip(weights, out.cross_attentions):
        torch.testing.assert_close(w, hw_w, rtol=1e-4, atol=1e-6)


def test_dab_image_position_encoding_equals_hugging_face():
    cfg = DetrConfig(backbone_width=8, d_model=16, heads=2, encoder_layers=1, decoder_layers=1, d_ff=32,
                     num_queries=2)
    hf_pe = hf_dab.DabDetrSinePositionEmbedding(DabDetrConfig(hidden_size=16, use_pretrained_backbone=False))
    theirs = hf_pe(torch.zeros(1, 16, 3, 5), torch.ones(1, 3, 5, dtype=torch.long))  # (1, d, H, W)
    ours = DabDetr(cfg, CLASSES).encoder.position_encoding(3, 5)  # (H·W, d)
    torch.testing.assert_close(ours, theirs[0].flatten(1).T, rtol=1e-5, atol=1e-5)


# ---- DN-DETR: noise and attention mask against their definition ----

def test_dn_box_noise_follows_the_definition():
    """DN-DETR: centre += U(−1, 1) · λ · (w/2, h/2), size += U(−1, 1) · λ · (w, h), clamped to [0, 1]."""
    g = torch.Generator().manual_seed(5)
    boxes = torch.rand(50, 4, generator=g) * 0.6 + 0.2
    u = torch.rand(boxes.shape, generator=torch.Generator().manual_seed(7)) * 2 - 1
    diff = torch.cat([boxes[:, 2:] / 2, boxes[:, 2:]], dim=1)
    expected = (boxes + u * diff * 0.4).clamp(0, 1)
    torch.testing.assert_close(noise_boxes(boxes, 0.4, torch.Generator().manual_seed(7)), expected)


@pytest.mark.parametrize("groups,size,matching", [(1, 3, 4), (3, 2, 5), (5, 1, 2)])
def test_dn_attention_mask_follows_the_definition(groups, size, matching):
    """True (blocked) iff a matching query looks at a DN query, or a DN query at another group's DN query."""
    pad = groups * size
    mask = attention_mask(groups, size, matching)
    for i in range(pad + matching):
        for j in range(pad + matching):
            blocked = (i >= pad and j < pad) or (i < pad and j < pad and i // size != j // size)
            assert bool(mask[i, j]) == blocked, (i, j)
