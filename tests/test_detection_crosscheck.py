"""Cross-checks of the DETR-family pieces against third-party implementations on identical inputs: Hugging Face
transformers (DETR / Deformable-DETR matchers and losses, its focal loss, and whole DETR and DAB-DETR models after
the backbone with our weights copied in, forward and backward), and DN-DETR's official ``prepare_for_dn`` run
verbatim from a text fixture. Models are built from configs only: nothing is downloaded."""
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from cvpdl.detection.criterion import LossWeights, SetCriterion
from cvpdl.detection.dab_detr import DabDetr, DabOptions
from cvpdl.detection.denoising import DenoisingConfig, attention_mask, noise_boxes
from cvpdl.detection.detr import Detr, DetrConfig, DetrOptions
from cvpdl.detection.matcher import MatcherCosts, hungarian_match

hf_loss = pytest.importorskip("transformers.loss.loss_for_object_detection")
hf_deformable_loss = pytest.importorskip("transformers.loss.loss_deformable_detr")
hf_dab = pytest.importorskip("transformers.models.dab_detr.modeling_dab_detr")
hf_detr = pytest.importorskip("transformers.models.detr.modeling_detr")
from transformers import DabDetrConfig  # noqa: E402
from transformers import DetrConfig as HFDetrConfig  # noqa: E402

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


def test_focal_class_loss_equals_hugging_face_forward_and_backward():
    """The focal classification loss against transformers' ``sigmoid_focal_loss`` (DETR's loss utilities: the
    official DAB/DN-DETR formula, mean over queries, so × Q), value and gradient w.r.t. the logits."""
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(3, 6, CLASSES, generator=g) * 2).requires_grad_()
    target_classes = torch.randint(0, CLASSES + 1, (3, 6), generator=g)  # CLASSES = "no object": all-zero row
    onehot = torch.zeros(3, 6, CLASSES)
    for b, q in zip(*torch.nonzero(target_classes < CLASSES, as_tuple=True)):
        onehot[b, q, target_classes[b, q]] = 1
    ours = SetCriterion(CLASSES, LossWeights(), MatcherCosts(focal=True)).class_loss(logits, target_classes, 4.0)
    theirs_logits = logits.detach().clone().requires_grad_()
    theirs = hf_loss.sigmoid_focal_loss(theirs_logits, onehot, num_boxes=4.0, alpha=0.25, gamma=2) * 6
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-6)
    ours.backward()
    theirs.backward()
    torch.testing.assert_close(logits.grad, theirs_logits.grad, rtol=1e-6, atol=1e-7)


# ---- the models against transformers' DETR and DAB-DETR, our weights copied into theirs ----
# Both run in float64, in training mode with dropout 0, from the same feature map (the backbone is replaced by it);
# a fixed random linear function of every layer's outputs is back-propagated and every parameter's gradient compared.
# transformers' attention takes its softmax in float32 (``softmax(..., dtype=torch.float32)``) and DabDetrModel makes
# its zero content queries in the default dtype: the ``float64`` fixture keeps float64 inputs in float64 there and
# makes float64 the default, so the two sides agree to rounding.
FORWARD_TOLERANCE = {"rtol": 1e-9, "atol": 1e-10}
GRADIENT_TOLERANCE = 1e-6  # max |g_ours − g_theirs| / max |g_theirs| per parameter


@pytest.fixture
def float64(monkeypatch):
    softmax = torch.nn.functional.softmax

    def keep_float64(x, dim=None, _stacklevel=3, dtype=None):
        return softmax(x, dim=dim, dtype=None if x.dtype == torch.float64 else dtype)

    monkeypatch.setattr(torch.nn.functional, "softmax", keep_float64)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(default)



def _tiny_resnet(channels: int) -> dict:
    """A backbone config for transformers with ``channels`` output channels (the width its ``input_projection``
    reads); the backbone itself is replaced by the fixed feature map, never run."""
    return {"model_type": "resnet", "embedding_size": 8, "hidden_sizes": [channels], "depths": [1],
            "out_features": ["stage1"]}


ATTENTION = {"sa_q_content": "self_attn.self_attn_query_content_proj",  # DAB-DETR's decoder layer → transformers'
             "sa_q_pos": "self_attn.self_attn_query_pos_proj", "sa_k_content": "self_attn.self_attn_key_content_proj",
             "sa_k_pos": "self_attn.self_attn_key_pos_proj", "sa_v": "self_attn.self_attn_value_proj",
             "sa_out": "self_attn.self_attn.output_proj", "norm1": "self_attn.self_attn_layer_norm",
             "ca_q_content": "cross_attn.cross_attn_query_content_proj",
             "ca_q_pos": "cross_attn.cross_attn_query_pos_proj",
             "ca_k_content": "cross_attn.cross_attn_key_content_proj", "ca_k_pos": "cross_attn.cross_attn_key_pos_proj",
             "ca_v": "cross_attn.cross_attn_value_proj", "ca_q_sine": "cross_attn.cross_attn_query_pos_sine_proj",
             "ca_out": "cross_attn.cross_attn.output_proj", "norm2": "cross_attn.cross_attn_layer_norm",
             "ffn.linear1": "mlp.fc1", "ffn.linear2": "mlp.fc2", "ffn.norm": "mlp.final_layer_norm",
             "ffn.act": "mlp.activation_fn"}
DAB_DECODER = {**{f"layers.{{}}.{ours}": f"layers.{{}}.{theirs}" for ours, theirs in ATTENTION.items()},
               "decoder_norm": "layernorm", "query_scale": "query_scale", "ref_point_head": "ref_point_head",
               "ref_anchor_head": "ref_anchor_head", "box_head": "bbox_embed"}  # names inside ``DabDetrDecoder``
DAB_MODEL = {**{ours: f"model.decoder.{theirs}" for ours, theirs in DAB_DECODER.items()},
             "box_head": "bbox_predictor",  # tied to model.decoder.bbox_embed
             "class_head": "class_embed", "anchors": "model.query_refpoint_embeddings",
             "encoder.input_proj": "model.input_projection",
             "encoder.pos_scale": "model.encoder.query_scale",
             "encoder.layers.{}.attn": "model.encoder.layers.{}.self_attn",
             "encoder.layers.{}.norm": "model.encoder.layers.{}.self_attn_layer_norm",
             "encoder.layers.{}.ffn.linear1": "model.encoder.layers.{}.fc1",
             "encoder.layers.{}.ffn.linear2": "model.encoder.layers.{}.fc2",
             "encoder.layers.{}.ffn.norm": "model.encoder.layers.{}.final_layer_norm",
             "encoder.layers.{}.ffn.act": "model.encoder.layers.{}.activation_fn"}
DETR_FFN = {"ffn.linear1": "mlp.fc1", "ffn.linear2": "mlp.fc2", "ffn.norm": "final_layer_norm"}
DETR_MODEL = {"query_pos": "model.query_position_embeddings", "decoder_norm": "model.decoder.layernorm",
              "encoder.input_proj": "model.input_projection",
              "class_head": "class_labels_classifier", "box_head": "bbox_predictor",
              **{f"encoder.layers.{{}}.{ours}": f"model.encoder.layers.{{}}.{theirs}" for ours, theirs in
                 {"attn": "self_attn", "attn.out_proj": "self_attn.o_proj", "norm": "self_attn_layer_norm",
                  **DETR_FFN}.items()},
              **{f"layers.{{}}.{ours}": f"model.decoder.layers.{{}}.{theirs}" for ours, theirs in
                 {"self_attn": "self_attn", "self_attn.out_proj": "self_attn.o_proj", "norm1": "self_attn_layer_norm",
                  "cross_attn": "encoder_attn", "cross_attn.out_proj": "encoder_attn.o_proj",
                  "norm2": "encoder_attn_layer_norm", **DETR_FFN}.items()}}


def _hf_names(name: str, table: dict[str, str]) -> list[str]:
    """Our parameter name → transformers' name(s), by the longest module prefix in ``table`` (``{}``: the layer
    index); nn.MultiheadAttention's packed ``in_proj`` → their q, k, v projections. [] if ``table`` has none."""
    best, theirs = None, ""
    for key, value in table.items():
        match = re.match(re.escape(key).replace(re.escape("{}"), r"(\d+)") + r"\.", name)
        if match and (best is None or match.end() > best.end()):
            best, theirs = match, value
    if best is None:
        return []
    theirs = theirs.format(*best.groups()) + "." + name[best.end():]
    module, param = theirs.rsplit(".", 1)
    if param.startswith("in_proj_"):
        return [f"{module}.{p}_proj.{param.removeprefix('in_proj_')}" for p in "qkv"]
    return [theirs]


def _copy_weights(ours: nn.Module, theirs: nn.Module, table: dict[str, str]) -> None:
    """Every tensor ``table`` maps is copied; every tensor of ``theirs`` must receive one."""
    state = {}
    for name, value in ours.state_dict().items():
        names = _hf_names(name, table)
        state.update(zip(names, value.chunk(len(names)) if names else []))
    missing, unexpected = theirs.load_state_dict(state, strict=False)
    assert not unexpected, unexpected
    assert all(k.startswith("model.decoder.bbox_embed.") for k in missing), missing  # tied: loaded via its twin


def gradient_differences(ours: nn.Module, theirs: nn.Module, table: dict[str, str]) -> dict[str, float]:
    """Per parameter that ``table`` maps: max |g_ours − g_theirs| / max |g_theirs|, the denominator at least 1e-6
    (attention's key biases have a zero gradient, softmax being shift-invariant: both sides are rounding noise)."""
    out = {}
    for name, p in ours.named_parameters():
        names = _hf_names(name, table)
        if names:
            expected = torch.cat([theirs.get_parameter(n).grad for n in names])
            got = torch.zeros_like(p) if p.grad is None else p.grad  # None: no gradient reached it
            out[name] = ((got - expected).abs().max() / expected.abs().max().clamp(min=1e-6)).item()
    return out


def _assert_same_gradients(ours: nn.Module, theirs: nn.Module, table: dict[str, str], everything: bool) -> None:
    """Each parameter's gradient within GRADIENT_TOLERANCE of transformers' (relative to its largest entry)."""
    if everything:
        assert not [n for n, _ in ours.named_parameters() if not _hf_names(n, table)]
    differences = gradient_differences(ours, theirs, table)
    assert differences and max(differences.values()) < GRADIENT_TOLERANCE, \
        {n: v for n, v in differences.items() if v >= GRADIENT_TOLERANCE}


def _linear_readout(tensors, seed: int) -> torch.Tensor:
    """A fixed random linear function of ``tensors``: its gradient reaches every element, weighted differently."""
    g = torch.Generator().manual_seed(seed)
    return sum((t * torch.randn(t.shape, generator=g, dtype=t.dtype)).sum() for t in tensors)


class FixedFeatures(nn.Module):
    """A backbone returning a given feature map, wrapped as the caller expects it."""

    def __init__(self, features: torch.Tensor, wrap=lambda f: f):
        super().__init__()
        self.features, self.wrap = features, wrap

    def forward(self, images):
        return self.wrap(self.features)


def _perturb_dab(model: DabDetr) -> None:
    """Non-zero Δ and PReLU slopes other than 0.25, so the anchor update and the activations are exercised."""
    with torch.no_grad():
        for p in model.box_head.parameters():
            p.normal_(0, 0.3)
        for module in model.modules():
            if isinstance(module, nn.PReLU):
                module.weight.uniform_(0.1, 0.5)


def _dab_decoder_pair(seed: int, layers: int = 3):
    d, heads, queries = 32, 4, 6
    cfg = DetrConfig(backbone_width=8, d_model=d, heads=heads, encoder_layers=1, decoder_layers=layers, d_ff=48,
                     num_queries=queries)
    torch.manual_seed(seed)
    ours = DabDetr(cfg, CLASSES, options=DabOptions()).double()
    _perturb_dab(ours)
    hf_cfg = DabDetrConfig(hidden_size=d, decoder_attention_heads=heads, decoder_ffn_dim=48, decoder_layers=layers,
                           encoder_layers=1, dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
                           activation_function="prelu", num_queries=queries, use_pretrained_backbone=False)
    theirs = hf_dab.DabDetrDecoder(hf_cfg)
    theirs.bbox_embed = hf_dab.DabDetrMLP(d, d, 4, 3)
    theirs.double()
    _copy_weights(ours, theirs, DAB_DECODER)
    g = torch.Generator().manual_seed(seed)
    inputs = {"tgt": torch.randn(2, queries, d, generator=g), "memory": torch.randn(2, 20, d, generator=g),
              "pos": torch.randn(2, 20, d, generator=g), "refpoints": torch.randn(2, queries, 4, generator=g)}
    return ours, theirs, {k: v.double() for k, v in inputs.items()}


def _run_hf_decoder(theirs, x, attentions: bool = False):
    return theirs(inputs_embeds=x["tgt"], encoder_hidden_states=x["memory"], memory_key_padding_mask=None,
                  object_queries=x["pos"], query_position_embeddings=x["refpoints"], output_attentions=attentions,
                  return_dict=True)


@pytest.mark.parametrize("seed", range(2))
def test_dab_decoder_forward_equals_hugging_face(seed, float64):
    """Eval mode: per-layer normed outputs, the anchors each layer's box is refined from, and the cross-attention
    weights the analyses read."""
    ours, theirs, x = _dab_decoder_pair(seed)
    ours.eval(), theirs.eval()
    with torch.no_grad():
        hidden, references, weights = ours.decode(x["tgt"], x["refpoints"], x["memory"], x["pos"])
        out = _run_hf_decoder(theirs, x, attentions=True)
    torch.testing.assert_close(torch.stack(hidden), out.intermediate_hidden_states, **FORWARD_TOLERANCE)
    torch.testing.assert_close(torch.stack(references), out.reference_points, **FORWARD_TOLERANCE)
    for w, hf_w in zip(weights, out.cross_attentions):
        torch.testing.assert_close(w, hf_w, **FORWARD_TOLERANCE)


@pytest.mark.parametrize("seed", range(2))
def test_dab_decoder_gradients_equal_hugging_face(seed, float64):
    """Training mode, dropout 0: a readout of every layer's output and of the anchors its box is refined from is
    back-propagated; every decoder parameter and input gets transformers' gradient. transformers keeps the refined
    anchor's gradient for the next layer's box and detaches only what the next layer's queries read (the official
    ``ref_points`` / ``reference_points.detach()``): detaching both fails here."""
    ours, theirs, x = _dab_decoder_pair(seed)
    ours.train(), theirs.train()
    ours_x = {k: v.clone().requires_grad_() for k, v in x.items()}
    theirs_x = {k: v.clone().requires_grad_() for k, v in x.items()}
    hidden, references, _ = ours.decode(ours_x["tgt"], ours_x["refpoints"], ours_x["memory"], ours_x["pos"])
    out = _run_hf_decoder(theirs, theirs_x)
    _linear_readout([torch.stack(hidden), torch.stack(references)], seed).backward()
    _linear_readout([out.intermediate_hidden_states, out.reference_points], seed).backward()
    _assert_same_gradients(ours, theirs, DAB_DECODER, everything=False)
    for k in x:
        torch.testing.assert_close(ours_x[k].grad, theirs_x[k].grad, **FORWARD_TOLERANCE, msg=k)


def _dab_model_pair(seed: int):
    """Our DabDetr and transformers' DabDetrForObjectDetection with our weights, both reading one feature map."""
    d, heads, layers, queries = 32, 4, 3, 6
    cfg = DetrConfig(backbone_width=8, d_model=d, heads=heads, encoder_layers=2, decoder_layers=layers, d_ff=48,
                     num_queries=queries)
    torch.manual_seed(seed)
    ours = DabDetr(cfg, CLASSES, options=DabOptions()).double()
    _perturb_dab(ours)
    hf_cfg = DabDetrConfig(hidden_size=d, encoder_attention_heads=heads, decoder_attention_heads=heads,
                           encoder_ffn_dim=48, decoder_ffn_dim=48, encoder_layers=2, decoder_layers=layers,
                           num_queries=queries, num_labels=CLASSES, dropout=0.0, attention_dropout=0.0,
                           activation_dropout=0.0, activation_function="prelu", auxiliary_loss=True,
                           use_pretrained_backbone=False, use_timm_backbone=False,
                           backbone_config=_tiny_resnet(ours.encoder.input_proj.in_channels))
    theirs = hf_dab.DabDetrForObjectDetection(hf_cfg)
    features = torch.randn(2, ours.encoder.input_proj.in_channels, 4, 5, generator=torch.Generator().manual_seed(seed))
    ours_features, theirs_features = features.clone().requires_grad_(), features.clone().requires_grad_()
    ours.encoder.backbone = FixedFeatures(ours_features)
    float32_pe = ours.encoder.position_encoding  # computed in float32, as transformers' (then cast to the features')
    ours.encoder.position_encoding = lambda *args: float32_pe(*args).double()
    theirs.model.backbone.conv_encoder.model = FixedFeatures(theirs_features,
                                                             lambda f: SimpleNamespace(feature_maps=[f]))
    theirs.double()
    _copy_weights(ours, theirs, DAB_MODEL)
    return ours, theirs, ours_features, theirs_features


@pytest.mark.parametrize("seed", range(2))
def test_dab_detr_forward_and_gradients_equal_hugging_face(seed, float64):
    """The whole model after the backbone: PE, the encoder with its positional scaling, anchors → decoder → every
    layer's logits and boxes (box = Δ + inverse_sigmoid(anchor), ``DABDETR.py``), and back: every parameter
    (encoder, anchors, heads, decoder) and the feature map get transformers' gradient."""
    ours, theirs, ours_features, theirs_features = _dab_model_pair(seed)
    images = torch.zeros(2, 3, 32, 40, dtype=torch.float64)
    ours.train(), theirs.train()
    out = ours(images)
    targets = [{"class_labels": torch.tensor([1, 3]),
                "boxes": torch.tensor([[0.3, 0.4, 0.2, 0.3], [0.6, 0.6, 0.3, 0.2]], dtype=torch.float64)},
               {"class_labels": torch.tensor([0]), "boxes": torch.tensor([[0.5, 0.5, 0.4, 0.4]], dtype=torch.float64)}]
    hf = theirs(pixel_values=images, labels=targets)  # labels: transformers returns the auxiliary layers only then
    hf_layers = [*hf.auxiliary_outputs, {"logits": hf.logits, "pred_boxes": hf.pred_boxes}]
    assert len(hf_layers) == len(out["logits"])
    for logits, boxes, layer in zip(out["logits"], out["boxes"], hf_layers):
        torch.testing.assert_close(logits, layer["logits"], **FORWARD_TOLERANCE)
        torch.testing.assert_close(boxes, layer["pred_boxes"], **FORWARD_TOLERANCE)
    _linear_readout(out["logits"] + out["boxes"], seed).backward()
    _linear_readout([x["logits"] for x in hf_layers] + [x["pred_boxes"] for x in hf_layers], seed).backward()
    _assert_same_gradients(ours, theirs, DAB_MODEL, everything=True)
    torch.testing.assert_close(ours_features.grad, theirs_features.grad, **FORWARD_TOLERANCE)


@pytest.mark.parametrize("seed", range(2))
def test_detr_forward_and_gradients_equal_hugging_face(seed, float64):
    """DETR after the backbone: PE, encoder, decoder over the learned queries, the heads on every layer's normed
    output, forward and backward. transformers' ``DetrDecoder`` with ``auxiliary_loss`` feeds the normed output to
    the next layer, unlike the official ``TransformerDecoder``; so it runs without, and the earlier layers' outputs
    are read from its layers by hooks and put through its own decoder norm and heads, as the official DETR does."""
    d, heads, layers, queries = 32, 4, 3, 6
    cfg = DetrConfig(backbone_width=8, d_model=d, heads=heads, encoder_layers=2, decoder_layers=layers, d_ff=48,
                     num_queries=queries)
    torch.manual_seed(seed)
    ours = Detr(cfg, CLASSES, DetrOptions(dropout=0.0)).double()
    hf_cfg = HFDetrConfig(d_model=d, encoder_attention_heads=heads, decoder_attention_heads=heads, encoder_ffn_dim=48,
                          decoder_ffn_dim=48, encoder_layers=2, decoder_layers=layers, num_queries=queries,
                          num_labels=CLASSES, dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
                          auxiliary_loss=False, use_pretrained_backbone=False, use_timm_backbone=False,
                          backbone_config=_tiny_resnet(ours.encoder.input_proj.in_channels))
    theirs = hf_detr.DetrForObjectDetection(hf_cfg)
    features = torch.randn(2, ours.encoder.input_proj.in_channels, 4, 5, generator=torch.Generator().manual_seed(seed))
    ours_features, theirs_features = features.clone().requires_grad_(), features.clone().requires_grad_()
    ours.encoder.backbone = FixedFeatures(ours_features)
    theirs.model.backbone.model = FixedFeatures(theirs_features, lambda f: [f])
    theirs.double()
    _copy_weights(ours, theirs, DETR_MODEL)
    layer_outputs = []
    for layer in theirs.model.decoder.layers:
        layer.register_forward_hook(lambda module, args, output: layer_outputs.append(
            output[0] if isinstance(output, tuple) else output))
    images = torch.zeros(2, 3, 32, 40, dtype=torch.float64)
    ours.train(), theirs.train()
    out = ours(images)
    hf = theirs(pixel_values=images)
    normed = [theirs.model.decoder.layernorm(h) for h in layer_outputs]
    hf_logits = [theirs.class_labels_classifier(h) for h in normed]
    hf_boxes = [theirs.bbox_predictor(h).sigmoid() for h in normed]
    torch.testing.assert_close(hf_logits[-1], hf.logits)  # the hooks read what transformers' own path computes
    torch.testing.assert_close(hf_boxes[-1], hf.pred_boxes)
    # transformers computes DETR's image PE in the model's dtype, ours (and the official) in float32: ~1e-8 apart
    for ours_x, theirs_x in zip(out["logits"] + out["boxes"], hf_logits + hf_boxes, strict=True):
        torch.testing.assert_close(ours_x, theirs_x, rtol=1e-6, atol=1e-7)
    _linear_readout(out["logits"] + out["boxes"], seed).backward()
    _linear_readout(hf_logits + hf_boxes, seed).backward()
    _assert_same_gradients(ours, theirs, DETR_MODEL, everything=True)
    torch.testing.assert_close(ours_features.grad, theirs_features.grad, rtol=1e-6, atol=1e-7)


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


# ---- DN-DETR's queries and losses against the official ``dn_components`` (verbatim text fixture) ----

DN_FIXTURE = Path(__file__).parent / "fixtures" / "dn_detr_official_dn_components.py.txt"
DN_GROUPS, DN_SEED, DN_QUERIES, DN_D = 3, 4, 5, 16


def _official_dn(noise: dict) -> dict:
    """The official functions on the CPU: the ``.cuda()`` / ``.to('cuda')`` calls dropped, and the random draws of
    ``prepare_for_dn`` (``rand_like`` for the label flips, ``randint_like`` for the new labels, ``rand_like`` for the
    box noise) answered from ``noise``, given in its own order (group-major over the batch's concatenated targets)."""
    source = DN_FIXTURE.read_text().replace(".cuda()", "").replace(".to('cuda')", "")
    uniforms = iter([noise["flip"], noise["box"]])

    class ReplayTorch:
        def __getattr__(self, name):
            return getattr(torch, name)

        @staticmethod
        def rand_like(x):
            u = next(uniforms)
            assert u.shape == x.shape
            return u

        @staticmethod
        def randint_like(chosen, low, high):
            return noise["label"][chosen]

    namespace = {"torch": ReplayTorch()}
    exec(compile(source, str(DN_FIXTURE), "exec"), namespace)
    namespace["box_ops"] = SimpleNamespace(**{k: namespace[k] for k in ("box_cxcywh_to_xyxy", "generalized_box_iou")})
    return namespace


def _noise_in_official_order(targets, groups: int, seed: int) -> dict:
    """The draws ``build_dn_queries`` makes from ``seed`` (flip uniforms and random labels per (image, padded slot),
    then box uniforms per slot row), reordered to the official layout: for each group, each image's targets."""
    b, sizes = len(targets), [len(t["labels"]) for t in targets]
    size = max(sizes)
    g = torch.Generator().manual_seed(seed)
    flip = torch.rand((b, groups * size), generator=g)
    label = torch.randint(0, CLASSES, (b, groups * size), generator=g)
    box = torch.rand((b * groups * size, 4), generator=g).view(b, groups * size, 4)
    slots = [(i, k * size + j) for k in range(groups) for i, n in enumerate(sizes) for j in range(n)]
    rows, cols = torch.tensor([i for i, _ in slots]), torch.tensor([c for _, c in slots])
    return {"flip": flip[rows, cols], "label": label[rows, cols], "box": box[rows, cols]}


def _dn_case():
    """A DN-DETR model, three images' targets (one without boxes), and the official code with the same noise."""
    cfg = DetrConfig(backbone_width=8, d_model=DN_D, heads=2, encoder_layers=1, decoder_layers=2, d_ff=32,
                     num_queries=DN_QUERIES)
    torch.manual_seed(0)
    model = DabDetr(cfg, CLASSES, DenoisingConfig(groups=DN_GROUPS, label_flip=0.2, box_noise=0.4)).train()
    g = torch.Generator().manual_seed(1)
    targets = [{"labels": torch.tensor([1, 3]), "boxes": torch.rand(2, 4, generator=g) * 0.5 + 0.2},
               {"labels": torch.zeros(0, dtype=torch.long), "boxes": torch.zeros(0, 4)},
               {"labels": torch.tensor([0, 2, 4]), "boxes": torch.rand(3, 4, generator=g) * 0.5 + 0.2}]
    noise = _noise_in_official_order(targets, DN_GROUPS, DN_SEED)
    assert (noise["flip"] < 0.2).any() and (noise["label"][noise["flip"] < 0.2] != 0).any()  # some labels flip
    return model, targets, _official_dn(noise)


def test_dn_queries_equal_the_official_prepare_for_dn():
    """Same targets and noise: the content queries (noised label embeddings with indicator 1, zero padding, then the
    "unknown" label with indicator 0), anchors in logit space, the attention mask, and which query reconstructs
    which ground truth (with the loss normaliser) are the official ones; without denoising, the plain queries."""
    model, targets, official = _dn_case()
    with torch.no_grad():
        tgt, refpoints, mask, dn = model.initial_queries(3, "cpu", targets, torch.Generator().manual_seed(DN_SEED))
        label, bbox, attn_mask, mask_dict = official["prepare_for_dn"](
            (targets, DN_GROUPS, 0.2, 0.4, 0), model.anchors.weight, 3, True, DN_QUERIES, CLASSES, DN_D,
            model.label_embed)
    torch.testing.assert_close(tgt, label.transpose(0, 1))
    torch.testing.assert_close(refpoints, bbox.transpose(0, 1))
    assert torch.equal(mask, attn_mask) and dn["pad"] == mask_dict["pad_size"]
    known_labels, known_boxes = mask_dict["known_lbs_bboxes"]
    image = mask_dict["batch_idx"][mask_dict["known_indice"]]
    theirs = sorted((int(i), int(q), int(c), *b.tolist())
                    for i, q, c, b in zip(image, mask_dict["map_known_indice"], known_labels, known_boxes))
    ours = sorted((i, int(q), int(t["labels"][j]), *t["boxes"][j].tolist())
                  for i, (t, (queries, gts)) in enumerate(zip(targets, dn["indices"])) for q, j in zip(queries, gts))
    assert ours == theirs
    model.eval()
    with torch.no_grad():
        tgt, refpoints, mask, dn = model.initial_queries(3, "cpu", targets)
        label, bbox, attn_mask, mask_dict = official["prepare_for_dn"](0, model.anchors.weight, 3, False, DN_QUERIES,
                                                                       CLASSES, DN_D, model.label_embed)
    torch.testing.assert_close(tgt, label.transpose(0, 1))
    torch.testing.assert_close(refpoints, bbox.transpose(0, 1))
    assert mask is attn_mask is dn is mask_dict is None


def test_dn_losses_equal_the_official_compute_dn_loss_forward_and_backward():
    """The denoising losses of every layer (focal, L1, GIoU over each group's reconstructions, normalised by the
    targets of all groups) against the official ``dn_post_process`` + ``compute_dn_loss`` with DN-DETR's weights
    (1, 5, 2), on the same DN outputs: values and gradients w.r.t. the DN queries' logits and boxes."""
    model, targets, official = _dn_case()
    with torch.no_grad():
        _, _, _, dn = model.initial_queries(3, "cpu", targets, torch.Generator().manual_seed(DN_SEED))
        *_, mask_dict = official["prepare_for_dn"]((targets, DN_GROUPS, 0.2, 0.4, 0), model.anchors.weight, 3, True,
                                                   DN_QUERIES, CLASSES, DN_D, model.label_embed)
    g = torch.Generator().manual_seed(2)
    layers, total = 2, dn["pad"] + DN_QUERIES
    logits = (torch.randn(layers, 3, total, CLASSES, generator=g) * 2).requires_grad_()
    boxes = (torch.rand(layers, 3, total, 4, generator=g) * 0.5 + 0.2).requires_grad_()
    split = dn["pad"]
    outputs = {"logits": list(logits[:, :, split:]), "boxes": list(boxes[:, :, split:]),
               "dn": {**dn, "logits": list(logits[:, :, :split]), "boxes": list(boxes[:, :, :split])}}
    ours, _ = SetCriterion(CLASSES, LossWeights(), MatcherCosts(cost_class=2.0, focal=True))(outputs, targets)
    theirs_logits, theirs_boxes = logits.detach().clone().requires_grad_(), boxes.detach().clone().requires_grad_()
    official["dn_post_process"](theirs_logits, theirs_boxes, mask_dict)
    theirs = official["compute_dn_loss"](mask_dict, True, layers - 1, 0.25)
    for name, weight in (("ce", 1.0), ("bbox", 5.0), ("giou", 2.0)):
        total_official = weight * sum(v for k, v in theirs.items() if re.fullmatch(rf"tgt_loss_{name}(_\d+)?", k))
        assert ours[f"loss_dn_{name}"].item() == pytest.approx(total_official.item(), rel=1e-5), name
        theirs[f"weighted_{name}"] = total_official
    sum(ours[f"loss_dn_{name}"] for name in ("ce", "bbox", "giou")).backward()
    sum(theirs[f"weighted_{name}"] for name in ("ce", "bbox", "giou")).backward()
    torch.testing.assert_close(logits.grad[:, :, :split], theirs_logits.grad[:, :, :split], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(boxes.grad[:, :, :split], theirs_boxes.grad[:, :, :split], rtol=1e-5, atol=1e-6)
