"""DETR (Carion et al., ECCV 2020), small: backbone → sine PE → encoder → decoder over N learned queries →
class (softmax, + "no object") and box (sigmoid cxcywh) heads on every decoder layer (auxiliary losses)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from cvpdl.detection.backbone import build_backbone
from cvpdl.detection.position_encoding import image_position_encoding
from cvpdl.detection.transformer import MLP, DetrDecoderLayer, EncoderLayer


@dataclass(frozen=True)
class DetrConfig:
    backbone_width: int = 32
    d_model: int = 64
    heads: int = 4
    encoder_layers: int = 2
    decoder_layers: int = 3
    d_ff: int = 128
    num_queries: int = 12


class DetrEncoder(nn.Module):
    """Backbone and encoder shared by every variant: image → memory (B, HW, d), its PE (1, HW, d), grid size."""

    def __init__(self, cfg: DetrConfig):
        super().__init__()
        # channels-last: oneDNN's convolutions (most of a step's time at this size) run faster in it
        self.backbone = build_backbone(cfg.backbone_width, cfg.d_model).to(memory_format=torch.channels_last)
        self.layers = nn.ModuleList(EncoderLayer(cfg.d_model, cfg.heads, cfg.d_ff) for _ in range(cfg.encoder_layers))
        self.d_model = cfg.d_model

    def forward(self, images: torch.Tensor):
        fmap = self.backbone(images.contiguous(memory_format=torch.channels_last))
        b, d, h, w = fmap.shape
        memory = fmap.flatten(2).transpose(1, 2)
        pos = image_position_encoding(h, w, d, fmap.device)[None]
        for layer in self.layers:
            memory = layer(memory, pos)
        return memory, pos, (h, w)


class Detr(nn.Module):
    focal = False

    def __init__(self, cfg: DetrConfig, num_classes: int):
        super().__init__()
        self.encoder = DetrEncoder(cfg)
        self.query_pos = nn.Embedding(cfg.num_queries, cfg.d_model)
        self.layers = nn.ModuleList(DetrDecoderLayer(cfg.d_model, cfg.heads, cfg.d_ff)
                                    for _ in range(cfg.decoder_layers))
        self.class_head = nn.Linear(cfg.d_model, num_classes + 1)
        self.box_head = MLP(cfg.d_model, cfg.d_model, 4, 3)

    def positional_parts(self, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The positional parts of the first cross-attention: W_q · query_pos and W_k · PE (projections only)."""
        attn = self.layers[0].cross_attn
        d = self.query_pos.embedding_dim
        return self.query_pos.weight @ attn.in_proj_weight[:d].T, pos @ attn.in_proj_weight[d:2 * d].T

    def forward(self, images: torch.Tensor, targets: list[dict] | None = None) -> dict:
        memory, pos, grid = self.encoder(images)
        query_pos = self.query_pos.weight[None].expand(len(images), -1, -1)
        tgt = torch.zeros_like(query_pos)
        out = {"logits": [], "boxes": [], "cross_attn": [], "grid": grid}
        for layer in self.layers:
            tgt, weights = layer(tgt, query_pos, memory, pos)
            out["logits"].append(self.class_head(tgt))
            out["boxes"].append(self.box_head(tgt).sigmoid())
            out["cross_attn"].append(weights)
        return out
