"""DAB-DETR (Liu et al., ICLR 2022) and, with ``denoising``, DN-DETR on top of it (Li et al., CVPR 2022), after
the official code (IDEA-Research/DAB-DETR ``models/DAB_DETR``, IDEA-Research/DN-DETR ``models/DN_DAB_DETR``).

Queries are learned 4-D anchors (x, y, w, h) stored in logit space. Each decoder layer: positional query =
MLP(PE(x)‖PE(y)‖PE(w)‖PE(h)); conditional cross-attention with the anchor's (y, x) sine embedding, scaled by a
content transform (from the second layer on) and modulated by (w_ref / w, h_ref / h); then the anchor is refined by
a Δ in inverse-sigmoid space. The next layer's queries read the refined anchor detached, but the box that layer
predicts is refined from the undetached one, so its gradient also flows through the previous layer's refinement
(official ``ref_points`` / ``reference_points.detach()``). The heads read the decoder-normed output; the anchor
update reads the un-normed one, as the official decoder does. Classification is sigmoid (focal loss).
The content query starts at zero (DAB-DETR); DN-DETR's starts at the embedding of the "unknown" label with
indicator 0, its denoising queries at their noised label's embedding with indicator 1, and padding at zero.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from cvpdl.detection.box_ops import inverse_sigmoid
from cvpdl.detection.criterion import LossWeights
from cvpdl.detection.denoising import DenoisingConfig, attention_mask, build_dn_queries
from cvpdl.detection.detr import DetrConfig, DetrEncoder
from cvpdl.detection.parts import DetectorParts
from cvpdl.detection.position_encoding import sine_embed
from cvpdl.detection.transformer import (MLP, Activation, ConditionalDecoderLayer, activation, check_dropout,
                                         xavier_init)
from cvpdl.errors import UserInputError


@dataclass(frozen=True)
class DabOptions:
    """DAB/DN-DETR's own settings, official defaults (``main.py`` of both repositories)."""

    dropout: float = 0.0
    activation: Activation = "prelu"  # ``transformer_activation``
    pe_temperature: float = 20.0  # ``pe_temperatureH`` / ``pe_temperatureW`` of the image PE
    matcher_cost_class: float = 2.0  # ``set_cost_class``


class DabDetr(nn.Module):
    focal = True  # sigmoid focal classification, no "no object" class: criterion and post-processing follow it

    @classmethod
    def build(cls, cfg: DetrConfig, num_classes: int, weights: LossWeights, options: DabOptions = DabOptions(),
              denoising: DenoisingConfig | None = None) -> DetectorParts:
        """Model, criterion and post-processing: DAB-DETR, or DN-DETR with ``denoising``."""
        return DetectorParts.assemble(cls(cfg, num_classes, denoising, options), num_classes, weights,
                                      options.matcher_cost_class)

    def __init__(self, cfg: DetrConfig, num_classes: int, denoising: DenoisingConfig | None = None,
                 options: DabOptions = DabOptions()):
        super().__init__()
        d = cfg.d_model
        dropout = check_dropout(options.dropout)
        activation(options.activation)  # validates the name
        if options.pe_temperature <= 0:
            raise UserInputError(f"pe_temperature must be positive, got {options.pe_temperature}")
        self.d_model, self.num_classes, self.denoising = d, num_classes, denoising
        self.encoder = DetrEncoder(cfg, dropout, options.activation, options.pe_temperature, scale_pos=True)
        self.anchors = nn.Embedding(cfg.num_queries, 4)  # official: nn.Embedding's N(0, 1), in logit space
        # DN-DETR's ``label_enc``: d − 1 features and an indicator bit (1 = denoising query)
        self.label_embed = nn.Embedding(num_classes + 1, d - 1) if denoising is not None else None
        self.ref_point_head = MLP(2 * d, d, d, 2)
        self.query_scale = MLP(d, d, d, 2)
        self.ref_anchor_head = MLP(d, d, 2, 2)
        self.layers = nn.ModuleList(ConditionalDecoderLayer(d, cfg.heads, cfg.d_ff, dropout, options.activation,
                                                            is_first=i == 0) for i in range(cfg.decoder_layers))
        self.decoder_norm = nn.LayerNorm(d)
        for part in (self.encoder.layers, self.encoder.pos_scale, self.layers, self.ref_point_head, self.query_scale,
                     self.ref_anchor_head):  # the official Transformer's modules
            xavier_init(part)
        self.class_head = nn.Linear(d, num_classes)
        self.box_head = MLP(d, d, 4, 3)  # shared by the layers: predicts Δ of the anchor in logit space
        # official initialisation: focal-loss prior (every class starts at probability 0.01, so the many negatives
        # do not swamp the first steps) and Δ = 0 (a layer's first prediction is its anchor)
        nn.init.constant_(self.class_head.bias, -math.log((1 - 0.01) / 0.01))
        nn.init.zeros_(self.box_head.layers[-1].weight)
        nn.init.zeros_(self.box_head.layers[-1].bias)

    def query_embeddings(self, reference: torch.Tensor, tgt: torch.Tensor, layer: int
                         ) -> tuple[torch.Tensor, torch.Tensor]:
        """Positional query (self-attention, first cross-attention) and the scaled, width/height-modulated (y, x)
        sine query of cross-attention, from anchors ``reference`` (sigmoid cxcywh) and content ``tgt``."""
        half = self.d_model // 2
        sine = sine_embed(reference, half)  # x, y, w, h → reorder to y, x, w, h (the image PE is y, x)
        sine = torch.cat([sine[..., half:2 * half], sine[..., :half], sine[..., 2 * half:]], dim=-1)
        query_sine = sine[..., :self.d_model] * (1.0 if layer == 0 else self.query_scale(tgt))
        ref_wh = self.ref_anchor_head(tgt).sigmoid()
        query_sine = torch.cat([query_sine[..., :half] * (ref_wh[..., 1:2] / reference[..., 3:4]),
                                query_sine[..., half:] * (ref_wh[..., 0:1] / reference[..., 2:3])], dim=-1)
        return self.ref_point_head(sine), query_sine

    def _matching_content(self, shape: tuple[int, ...], device) -> torch.Tensor:
        if self.label_embed is None:  # DAB-DETR
            return torch.zeros(*shape, self.d_model, device=device, dtype=self.anchors.weight.dtype)
        return self._content(torch.full(shape, self.num_classes, device=device), 0.0)  # DN-DETR

    def _content(self, labels: torch.Tensor, indicator: float) -> torch.Tensor:
        emb = self.label_embed(labels)
        return torch.cat([emb, torch.full_like(emb[..., :1], indicator)], dim=-1)

    def positional_parts(self, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The positional parts of the first cross-attention, per head [projected positional query ‖ projected
        modulated sine query] against [projected PE ‖ projected PE]: (Q, 2d) and (HW, 2d)."""
        reference = self.anchors.weight.sigmoid()[None]
        tgt = self._matching_content(reference.shape[:2], pos.device)
        query_pos, query_sine = self.query_embeddings(reference, tgt, 0)
        q, k = self.layers[0].positional_parts(query_pos, query_sine, pos[None] if pos.dim() == 2 else pos)
        return q[0], k[0]

    def decode(self, tgt: torch.Tensor, refpoints: torch.Tensor, memory: torch.Tensor, pos: torch.Tensor,
               mask: torch.Tensor | None = None) -> tuple[list, list, list]:
        """The decoder (official ``TransformerDecoder``): per layer the normed output, the anchors its box is refined
        from (sigmoid cxcywh: the input anchors, then the previous layer's refinement, not detached, as the official
        ``ref_points``) and its cross-attention weights (None in training). ``refpoints``: anchors in logit space
        (B, Q, 4)."""
        reference = refpoints.sigmoid()
        hidden, references, weights = [], [reference], []
        for i, layer in enumerate(self.layers):
            query_pos, query_sine = self.query_embeddings(reference, tgt, i)
            tgt, w = layer(tgt, query_pos, query_sine, memory, pos, mask)
            hidden.append(self.decoder_norm(tgt))
            weights.append(w)
            if i < len(self.layers) - 1:
                refined = (self.box_head(tgt) + inverse_sigmoid(reference)).sigmoid()
                references.append(refined)  # the next layer's box keeps the gradient through this refinement
                reference = refined.detach()  # the next layer's queries do not
        return hidden, references, weights

    def initial_queries(self, batch: int, device, targets: list[dict] | None = None,
                        generator: torch.Generator | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, dict | None]:
        """The decoder's input (DN-DETR's ``prepare_for_dn``): content queries (B, T, d), anchors in logit space
        (B, T, 4), the self-attention mask and the denoising bookkeeping. Training with denoising puts the noised
        ground truths first (T = pad + Q); otherwise T = Q and there is no mask."""
        q = self.anchors.num_embeddings
        tgt = self._matching_content((batch, q), device)
        refpoints = self.anchors.weight[None].expand(batch, -1, -1)
        if not (self.training and self.denoising is not None and targets is not None):
            return tgt, refpoints, None, None
        labels, boxes, valid, indices, group_size = build_dn_queries(targets, self.denoising, self.num_classes,
                                                                     generator)
        tgt, refpoints = self._with_denoising(tgt, refpoints, labels, boxes, valid)
        mask = attention_mask(self.denoising.groups, group_size, q, device)
        dn = {"pad": labels.shape[1], "indices": indices, "targets": targets, "groups": self.denoising.groups}
        return tgt, refpoints, mask, dn

    def _with_denoising(self, tgt: torch.Tensor, refpoints: torch.Tensor, labels: torch.Tensor, boxes: torch.Tensor,
                        valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The noised ground truths (labels (B, pad), boxes (B, pad, 4)) as queries before the matching ones; padding
        slots (images with fewer boxes than the largest) carry zero content, as in the official code."""
        tgt = torch.cat([self._content(labels, 1.0) * valid[..., None], tgt], dim=1)
        refpoints = torch.cat([inverse_sigmoid(boxes), refpoints], dim=1)
        return tgt, refpoints

    def forward(self, images: torch.Tensor, targets: list[dict] | None = None,
                generator: torch.Generator | None = None) -> dict:
        memory, pos, grid = self.encoder(images)
        tgt, refpoints, mask, dn = self.initial_queries(len(images), images.device, targets, generator)
        return self._outputs(memory, pos, grid, tgt, refpoints, mask, dn)

    def forward_denoising(self, images: torch.Tensor, labels: torch.Tensor, boxes: torch.Tensor,
                          valid: torch.Tensor, mask: torch.Tensor) -> dict:
        """``forward`` in training with the denoising queries drawn by the caller (``build_dn_queries``): a
        population member's, since ``vmap`` cannot draw from each member's generator. Its ``dn`` holds the
        predictions only; the caller keeps the bookkeeping."""
        memory, pos, grid = self.encoder(images)
        tgt, refpoints, _, _ = self.initial_queries(len(images), images.device)
        tgt, refpoints = self._with_denoising(tgt, refpoints, labels, boxes, valid)
        return self._outputs(memory, pos, grid, tgt, refpoints, mask, {"pad": labels.shape[1]})

    def _outputs(self, memory: torch.Tensor, pos: torch.Tensor, grid: tuple[int, int], tgt: torch.Tensor,
                 refpoints: torch.Tensor, mask: torch.Tensor | None, dn: dict | None) -> dict:
        """Decode and split the predictions: the matching queries' per layer, and the denoising queries' (``dn``)."""
        hidden, references, weights = self.decode(tgt, refpoints, memory, pos, mask)
        split = dn["pad"] if dn else 0
        out = {"logits": [], "boxes": [], "cross_attn": [], "grid": grid}
        dn_logits, dn_boxes = [], []
        for hs, reference, w in zip(hidden, references, weights):
            boxes = (self.box_head(hs) + inverse_sigmoid(reference)).sigmoid()
            logits = self.class_head(hs)
            out["logits"].append(logits[:, split:])
            out["boxes"].append(boxes[:, split:])
            out["cross_attn"].append(None if w is None else w[:, :, split:])
            if dn:
                dn_logits.append(logits[:, :split])
                dn_boxes.append(boxes[:, :split])
        if dn:
            out["dn"] = {**dn, "logits": dn_logits, "boxes": dn_boxes}
        return out
