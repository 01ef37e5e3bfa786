"""The models ``perf`` times: every ``detr`` variant as the suite trains it and its Hugging Face counterpart at the
nearest tiny config (optional ``bench`` extra), each as one optimiser step on (images, targets)."""
from __future__ import annotations

import torch

from benchmark import config as config_lib
from benchmark.registry import REGISTRY
from cvpdl.detection.backbone import build_body
from cvpdl.detection.criterion import LossWeights
from cvpdl.detection.dab_detr import DabOptions
from cvpdl.detection.detr import DetrConfig, DetrOptions

HF_DETR = "hf_detr"
HF_DAB = "hf_dab_detr"
HF_NAMES = {HF_DETR: "HF DETR", HF_DAB: "HF DAB-DETR"}


class _FeatureList(torch.nn.Module):
    """Our backbone's convolutions (without the final 1×1 projection, which HF's ``input_projection`` replaces),
    channels-last as in ours, in the shape HF's conv encoders expect: a ``BackboneOutput`` of one feature map
    (DETR's reads it as a dict, DAB-DETR's by ``.feature_maps``)."""

    def __init__(self, convs: torch.nn.Sequential):
        super().__init__()
        self.convs = convs.to(memory_format=torch.channels_last)

    def forward(self, pixel_values):
        from transformers.modeling_outputs import BackboneOutput

        return BackboneOutput(feature_maps=(self.convs(pixel_values.contiguous(memory_format=torch.channels_last)),))


def _hf_backbone_config(cfg: DetrConfig):
    """A two-stage ResNet config whose only role is to make HF build its input projection for our backbone's
    4·width channels; the ResNet itself is replaced by ``_FeatureList`` after the build."""
    from transformers import ResNetConfig

    w = cfg.backbone_width
    return ResNetConfig(num_channels=3, embedding_size=w, hidden_sizes=[2 * w, 4 * w], depths=[1, 1],
                        layer_type="basic", out_features=["stage2"])


def hf_detr(cfg: DetrConfig, num_classes: int, options: DetrOptions = DetrOptions()) -> torch.nn.Module:
    """Hugging Face DETR at our config: same d_model, layers, heads, FFN width, queries, aux loss, dropout (on
    residuals, attention weights and the FFN's inner activation, as ours), and our backbone swapped in for its
    ResNet (the same convolutions, stride 8, 4·width channels into a 1×1 projection), so the comparison is of the
    detector around it: transformer, matcher, losses."""
    from transformers import DetrConfig as HfDetrConfig
    from transformers import DetrForObjectDetection

    hf = HfDetrConfig(use_timm_backbone=False, backbone_config=_hf_backbone_config(cfg), use_pretrained_backbone=False,
                      num_queries=cfg.num_queries, d_model=cfg.d_model, encoder_layers=cfg.encoder_layers,
                      decoder_layers=cfg.decoder_layers, encoder_attention_heads=cfg.heads,
                      decoder_attention_heads=cfg.heads, encoder_ffn_dim=cfg.d_ff, decoder_ffn_dim=cfg.d_ff,
                      auxiliary_loss=True, num_labels=num_classes, dropout=options.dropout,
                      attention_dropout=options.dropout, activation_dropout=options.dropout)
    model = DetrForObjectDetection(hf)
    model.model.backbone.model = _FeatureList(build_body(cfg.backbone_width))
    return model


def hf_dab_detr(cfg: DetrConfig, num_classes: int, weights: LossWeights = LossWeights(),
                options: DabOptions = DabOptions()) -> torch.nn.Module:
    """Hugging Face DAB-DETR at our ``dab_detr`` config: same d_model, layers, heads, FFN width, queries (4-D
    anchors), activation (PReLU), dropout, image-PE temperature, aux loss, focal classification with our loss
    weights and class matching cost, and our backbone swapped in as for ``hf_detr``. HF types the weights,
    costs and temperature as ints: ours are whole numbers by default, and a weight does not change the work."""
    from transformers import DabDetrConfig, DabDetrForObjectDetection

    temperature = round(options.pe_temperature)
    hf = DabDetrConfig(backbone_config=_hf_backbone_config(cfg), num_queries=cfg.num_queries, hidden_size=cfg.d_model,
                       encoder_layers=cfg.encoder_layers, decoder_layers=cfg.decoder_layers,
                       encoder_attention_heads=cfg.heads, decoder_attention_heads=cfg.heads,
                       encoder_ffn_dim=cfg.d_ff, decoder_ffn_dim=cfg.d_ff, activation_function=options.activation,
                       dropout=options.dropout, attention_dropout=options.dropout,
                       activation_dropout=options.dropout, auxiliary_loss=True, num_labels=num_classes,
                       temperature_height=temperature, temperature_width=temperature,
                       class_cost=round(options.matcher_cost_class), cls_loss_coefficient=round(weights.ce),
                       bbox_loss_coefficient=round(weights.bbox), giou_loss_coefficient=round(weights.giou),
                       focal_alpha=weights.focal_alpha)
    model = DabDetrForObjectDetection(hf)
    model.model.backbone.conv_encoder.model = _FeatureList(build_body(cfg.backbone_width))
    return model


def _hf_model(name: str, cfg: dict, num_classes: int) -> torch.nn.Module:
    model_cfg = config_lib.section_config(cfg, "model", DetrConfig)
    if name == HF_DETR:
        return hf_detr(model_cfg, num_classes, config_lib.section_config(cfg, "detr", DetrOptions))
    return hf_dab_detr(model_cfg, num_classes, config_lib.section_config(cfg, "loss", LossWeights),
                       config_lib.section_config(cfg, "dab", DabOptions))


def training_step(name: str, cfg: dict, num_classes: int, device: torch.device, compiled: bool = False):
    """(a closure doing one optimiser step of model ``name`` on (images, targets), the model); ``compiled``: the
    model's forward (and so its backward) under ``torch.compile``."""
    if name in HF_NAMES:
        model = _hf_model(name, cfg, num_classes).to(device)
        forward = torch.compile(model) if compiled else model

        def loss_of(images, targets):
            labels = [{"class_labels": t["labels"], "boxes": t["boxes"]} for t in targets]
            return forward(pixel_values=images, labels=labels).loss
    else:
        parts = REGISTRY.build(REGISTRY.method("detr", name), cfg).parts(num_classes)  # as the suite trains them
        model, criterion = parts.model.to(device), parts.criterion
        forward = torch.compile(model) if compiled else model
        generator = torch.Generator().manual_seed(0)

        def loss_of(images, targets):
            return sum(criterion(forward(images, targets, generator), targets)[0].values())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()

    def step(images, targets):
        loss = loss_of(images, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return step, model


def hf_available() -> bool:
    try:
        import transformers  # noqa: F401
    except ImportError:
        return False
    return True
