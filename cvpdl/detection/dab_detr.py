"""DAB-DETR (Liu et al., ICLR 2022) and, with ``denoising``, DN-DETR on top of it (Li et al., CVPR 2022).

Queries are learned 4-D anchors (x, y, w, h) stored in logit space. Each decoder layer: positional query =
MLP(PE(x)‖PE(y)‖PE(w)‖PE(h)); conditional cross-attention with the anchor's (y, x) sine embedding, scaled by a
content transform and modulated by (w_ref / w, h_ref / h); then the layer refines the anchor by a Δ in
inverse-sigmoid space, detached before the next layer. Classification is sigmoid (focal loss).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from cvpdl.detection.box_ops import inverse_sigmoid
from cvpdl.detection.denoising import DenoisingConfig, attention_mask, build_dn_queries
from cvpdl.detection.detr import DetrConfig, DetrEncoder
from cvpdl.detection.position_encoding import sine_embed
from cvpdl.detection.transformer import MLP, ConditionalDecoderLayer


class DabDetr(nn.Module):
    focal = True

    def __init__(self, cfg: DetrConfig, num_classes: int, denoising: DenoisingConfig | None = None):
        super().__init__()
        d = cfg.d_model
        self.d_model, self.num_classes, self.denoising = d, num_classes, denoising
        self.encoder = DetrEncoder(cfg)
        self.anchors = nn.Embedding(cfg.num_queries, 4)
        with torch.no_grad():  # centres spread over the image, boxes of a typical object size
            self.anchors.weight[:, :2].uniform_(0, 1)
            self.anchors.weight[:, 2:].fill_(0.25)
            self.anchors.weight.copy_(inverse_sigmoid(self.anchors.weight))
        # content of a query: a label embedding plus an indicator bit (1 = denoising query); the matching
        # queries all carry the "unknown" label (index num_classes) with indicator 0, as in DN-DETR
        self.label_embed = nn.Embedding(num_classes + 1, d - 1)
        self.ref_point_head = MLP(2 * d, d, d, 2)
        self.query_scale = MLP(d, d, d, 2)
        self.ref_anchor_head = MLP(d, d, 2, 2)
        self.layers = nn.ModuleList(ConditionalDecoderLayer(d, cfg.heads, cfg.d_ff) for _ in range(cfg.decoder_layers))
        self.class_head = nn.Linear(d, num_classes)
        self.box_head = MLP(d, d, 4, 3)  # shared by the layers: predicts Δ of the anchor in logit space
        # official initialisation: focal-loss prior (every class starts at probability 0.01, so the many negatives
        # do not swamp the first steps) and Δ = 0 (a layer's first prediction is its anchor)
        nn.init.constant_(self.class_head.bias, -math.log((1 - 0.01) / 0.01))
        nn.init.zeros_(self.box_head.layers[-1].weight)
        nn.init.zeros_(self.box_head.layers[-1].bias)

    def _query_sine(self, anchors: torch.Tensor, tgt: torch.Tensor, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Positional query (for self-attention) and the modulated (y, x) sine query of cross-attention."""
        half = self.d_model // 2
        sine = sine_embed(anchors, half)  # x, y, w, h → reorder to y, x, w, h (the image PE is y, x)
        sine = torch.cat([sine[..., half:2 * half], sine[..., :half], sine[..., 2 * half:]], dim=-1)
        query_sine = sine[..., :self.d_model] * (1.0 if layer == 0 else self.query_scale(tgt))
        ref_wh = self.ref_anchor_head(tgt).sigmoid()  # width/height-modulated attention
        query_sine = torch.cat([query_sine[..., :half] * (ref_wh[..., 1:2] / anchors[..., 3:4]),
                                query_sine[..., half:] * (ref_wh[..., 0:1] / anchors[..., 2:3])], dim=-1)
        return self.ref_point_head(sine), query_sine

    def positional_parts(self, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The positional parts of the first cross-attention: projected anchor sine query and projected PE."""
        q = self.anchors.num_embeddings
        tgt = self._content(torch.full((q,), self.num_classes, device=pos.device), 0.0)
        _, query_sine = self._query_sine(self.anchors.weight.sigmoid(), tgt, 0)
        layer = self.layers[0]
        return layer.q_pos(query_sine), layer.k_pos(pos)

    def _content(self, labels: torch.Tensor, indicator: float) -> torch.Tensor:
        emb = self.label_embed(labels)
        return torch.cat([emb, torch.full_like(emb[..., :1], indicator)], dim=-1)

    def forward(self, images: torch.Tensor, targets: list[dict] | None = None,
                generator: torch.Generator | None = None) -> dict:
        memory, pos, grid = self.encoder(images)
        b, q = len(images), self.anchors.num_embeddings
        anchors = self.anchors.weight[None].expand(b, -1, -1).sigmoid()
        tgt = self._content(torch.full((b, q), self.num_classes, device=images.device), 0.0)
        mask, dn = None, None
        if self.training and self.denoising is not None and targets is not None:
            labels, boxes, _, indices, group_size = build_dn_queries(targets, self.denoising, self.num_classes,
                                                                       generator)
            pad = labels.shape[1]
            tgt = torch.cat([self._content(labels, 1.0), tgt], dim=1)
            anchors = torch.cat([boxes, anchors], dim=1)
            mask = attention_mask(self.denoising.groups, group_size, q, images.device)
            dn = {"pad": pad, "indices": indices, "targets": targets, "groups": self.denoising.groups}
        out = {"logits": [], "boxes": [], "cross_attn": [], "grid": grid}
        dn_logits, dn_boxes = [], []
        for i, layer in enumerate(self.layers):
            query_pos, query_sine = self._query_sine(anchors, tgt, i)
            tgt, weights = layer(tgt, query_pos, query_sine, memory, pos, mask)
            boxes = (self.box_head(tgt) + inverse_sigmoid(anchors)).sigmoid()
            logits = self.class_head(tgt)
            split = dn["pad"] if dn else 0
            out["logits"].append(logits[:, split:])
            out["boxes"].append(boxes[:, split:])
            out["cross_attn"].append(None if weights is None else weights[:, :, split:])
            if dn:
                dn_logits.append(logits[:, :split])
                dn_boxes.append(boxes[:, :split])
            anchors = boxes.detach()  # DAB-DETR: the refined anchor, detached, feeds the next layer
        if dn:
            out["dn"] = {**dn, "logits": dn_logits, "boxes": dn_boxes}
        return out
