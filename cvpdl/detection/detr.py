"""DETR (Carion et al., ECCV 2020), small: backbone → sine PE → encoder → decoder over N learned queries →
decoder LayerNorm → class (softmax, + "no object") and box (sigmoid cxcywh) heads on every decoder layer
(auxiliary losses)."""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn

from cvpdl.detection.backbone import body_channels, build_body
from cvpdl.detection.criterion import LossWeights
from cvpdl.detection.parts import DetectorParts
from cvpdl.detection.position_encoding import image_position_encoding
from cvpdl.detection.postprocess import PostProcess
from cvpdl.detection.transformer import MLP, DetrDecoderLayer, EncoderLayer, check_dropout, xavier_init


@dataclass(frozen=True)
class DetrConfig:
    """The architecture every variant of a comparison shares."""

    backbone_width: int = 32
    d_model: int = 64
    heads: int = 4
    encoder_layers: int = 2
    decoder_layers: int = 3
    d_ff: int = 128
    num_queries: int = 12


@dataclass(frozen=True)
class DetrOptions:
    """DETR's own settings, official defaults (facebookresearch/detr ``main.py``)."""

    dropout: float = 0.1
    # official ``PostProcess``: one detection per query (its best class); the suite pins top-k over queries × classes
    # for every variant instead, so that only the query formulation differs
    one_detection_per_query: bool = False


class DetrEncoder(nn.Module):
    """Backbone, input projection and encoder: image → memory (B, HW, d), its PE (1, HW, d), grid size.

    ``pe_temperature``: 10000 (DETR) or 20 (DAB-DETR). ``scale_pos``: DAB-DETR's encoder multiplies the PE by an
    MLP of the current features before each layer (``pos * query_scale(output)``). A frozen backbone whose features
    were computed once is replaced by ``nn.Identity()``: the input is then its feature maps, not images.
    """

    def __init__(self, cfg: DetrConfig, dropout: float = 0.0, act: str = "relu", pe_temperature: float = 10000.0,
                 scale_pos: bool = False):
        super().__init__()
        # channels-last: oneDNN's convolutions (most of a step's time at this size) run faster in it
        self.backbone = build_body(cfg.backbone_width).to(memory_format=torch.channels_last)
        self.input_proj = nn.Conv2d(body_channels(cfg.backbone_width), cfg.d_model, 1)  # official ``input_proj``
        self.layers = nn.ModuleList(EncoderLayer(cfg.d_model, cfg.heads, cfg.d_ff, dropout, act)
                                    for _ in range(cfg.encoder_layers))
        self.pos_scale = MLP(cfg.d_model, cfg.d_model, cfg.d_model, 2) if scale_pos else None
        self.d_model, self.pe_temperature = cfg.d_model, pe_temperature

    def position_encoding(self, height: int, width: int, device=None) -> torch.Tensor:
        return image_position_encoding(height, width, self.d_model, self.pe_temperature, device)

    channels_last = True  # False in a population (``cvpdl.population``): vmap cannot re-lay a batched input

    def forward(self, images: torch.Tensor):
        fmap = self.input_proj(self.backbone(images.contiguous(memory_format=torch.channels_last)
                                             if self.channels_last else images))
        b, d, h, w = fmap.shape
        memory = fmap.flatten(2).transpose(1, 2)
        pos = self.position_encoding(h, w, fmap.device)[None]
        for layer in self.layers:
            memory = layer(memory, pos if self.pos_scale is None else pos * self.pos_scale(memory))
        return memory, pos, (h, w)


class Detr(nn.Module):
    focal = False  # softmax classification with a "no object" class: criterion and post-processing follow it

    @classmethod
    def build(cls, cfg: DetrConfig, num_classes: int, weights: LossWeights, options: DetrOptions = DetrOptions()
              ) -> DetectorParts:
        """Model, criterion and post-processing (official ``build``; matcher class cost 1, ``set_cost_class``)."""
        parts = DetectorParts.assemble(cls(cfg, num_classes, options), num_classes, weights, cost_class=1.0)
        return replace(parts, postprocess=PostProcess(cls.focal, options.one_detection_per_query))

    def __init__(self, cfg: DetrConfig, num_classes: int, options: DetrOptions = DetrOptions()):
        super().__init__()
        dropout = check_dropout(options.dropout)
        self.encoder = DetrEncoder(cfg, dropout)
        self.query_pos = nn.Embedding(cfg.num_queries, cfg.d_model)
        self.layers = nn.ModuleList(DetrDecoderLayer(cfg.d_model, cfg.heads, cfg.d_ff, dropout)
                                    for _ in range(cfg.decoder_layers))
        self.decoder_norm = nn.LayerNorm(cfg.d_model)  # on every layer's output the heads read, not the next layer's
        xavier_init(self.encoder.layers)
        xavier_init(self.layers)
        self.class_head = nn.Linear(cfg.d_model, num_classes + 1)
        self.box_head = MLP(cfg.d_model, cfg.d_model, 4, 3)

    def positional_parts(self, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The positional parts of the first cross-attention: W_q · query_pos and W_k · PE (projections only)."""
        attn = self.layers[0].cross_attn
        d = self.query_pos.embedding_dim
        return self.query_pos.weight @ attn.in_proj_weight[:d].T, pos @ attn.in_proj_weight[d:2 * d].T

    def forward(self, images: torch.Tensor, targets: list[dict] | None = None,
                generator: torch.Generator | None = None) -> dict:
        """Every variant's signature; DETR's queries depend on neither ``targets`` nor ``generator``."""
        memory, pos, grid = self.encoder(images)
        query_pos = self.query_pos.weight[None].expand(len(images), -1, -1)
        tgt = torch.zeros_like(query_pos)
        out = {"logits": [], "boxes": [], "cross_attn": [], "grid": grid}
        for layer in self.layers:
            tgt, weights = layer(tgt, query_pos, memory, pos)
            hs = self.decoder_norm(tgt)
            out["logits"].append(self.class_head(hs))
            out["boxes"].append(self.box_head(hs).sigmoid())
            out["cross_attn"].append(weights)
        return out
