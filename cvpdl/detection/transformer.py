"""Transformer pieces: the encoder, DETR's decoder layer and DAB-DETR's conditional decoder layer, post-norm with
dropout on every residual branch and on the attention weights, as in the official DETR / DAB-DETR code.

Decoder layers return their cross-attention weights (B, heads, Q, HW) for the sparsity analysis in eval mode; in
training mode nothing reads them, so they return None and attention runs through the fused kernel. Dropout draws
from torch's global generator, which the runner seeds per cell and the checkpoint saves and restores.
"""
from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from cvpdl.errors import UserInputError

ACTIVATIONS = {"relu": nn.ReLU, "prelu": nn.PReLU}  # DETR: ReLU; DAB/DN-DETR: PReLU (``transformer_activation``)
Activation = Literal["relu", "prelu"]  # the names of ACTIVATIONS, as a config field's type (checked when resolved)


def activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise UserInputError(f"unknown activation {name!r}; choose from: {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


def check_dropout(p: float) -> float:
    if not 0.0 <= p < 1.0:
        raise UserInputError(f"dropout must be in [0, 1), got {p}")
    return p


def xavier_init(module: nn.Module) -> None:
    """The official ``Transformer._reset_parameters``: Xavier-uniform for every matrix of the transformer."""
    for p in module.parameters():
        if p.dim() > 1:
            nn.init.xavier_uniform_(p)


class MLP(nn.Module):
    def __init__(self, d_in: int, d_hidden: int, d_out: int, layers: int):
        super().__init__()
        dims = [d_in] + [d_hidden] * (layers - 1) + [d_out]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x):
        for i, layer in enumerate(self.layers):
            x = layer(x) if i == len(self.layers) - 1 else F.relu(layer(x))
        return x


class FeedForward(nn.Module):
    """norm(x + dropout(linear2(dropout(act(linear1(x))))))."""

    def __init__(self, d: int, d_ff: int, dropout: float = 0.0, act: str = "relu"):
        super().__init__()
        self.linear1, self.act, self.linear2 = nn.Linear(d, d_ff), activation(act), nn.Linear(d_ff, d)
        self.dropout_inner, self.dropout_out = nn.Dropout(dropout), nn.Dropout(dropout)
        self.norm = nn.LayerNorm(d)

    def forward(self, x):
        return self.norm(x + self.dropout_out(self.linear2(self.dropout_inner(self.act(self.linear1(x))))))


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, dropout: float,
           need_weights: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Multi-head attention over per-head tensors (B, heads, N, d_h); ``mask`` (Nq, Nk) True = may not attend.
    Returns the heads concatenated (B, Nq, heads · d_v) and, if asked, the weights (B, heads, Nq, Nk)."""
    if need_weights:
        logits = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
        if mask is not None:
            logits = logits.masked_fill(mask, float("-inf"))
        weights = logits.softmax(dim=-1)
        out = F.dropout(weights, dropout, training=dropout > 0) @ v
    else:
        weights = None
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=None if mask is None else ~mask, dropout_p=dropout)
    return out.transpose(1, 2).flatten(2), weights


class EncoderLayer(nn.Module):
    def __init__(self, d: int, heads: int, d_ff: int, dropout: float = 0.0, act: str = "relu"):
        super().__init__()
        self.attn = nn.MultiheadAttention(d, heads, dropout=dropout, batch_first=True)
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(d)
        self.ffn = FeedForward(d, d_ff, dropout, act)

    def forward(self, src, pos):
        q = src + pos
        return self.ffn(self.norm(src + self.dropout(self.attn(q, q, src, need_weights=False)[0])))


class DetrDecoderLayer(nn.Module):
    """Self-attention and cross-attention with the learned query position added to queries (DETR)."""

    def __init__(self, d: int, heads: int, d_ff: int, dropout: float = 0.0):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d, heads, dropout=dropout, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(d, heads, dropout=dropout, batch_first=True)
        self.dropout1, self.dropout2 = nn.Dropout(dropout), nn.Dropout(dropout)
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.ffn = FeedForward(d, d_ff, dropout)

    def forward(self, tgt, query_pos, memory, pos, self_mask=None):
        q = tgt + query_pos
        tgt = self.norm1(tgt + self.dropout1(self.self_attn(q, q, tgt, attn_mask=self_mask, need_weights=False)[0]))
        out, weights = self.cross_attn(tgt + query_pos, memory + pos, memory, need_weights=not self.training,
                                       average_attn_weights=False)
        return self.ffn(self.norm2(tgt + self.dropout2(out))), weights


class ConditionalDecoderLayer(nn.Module):
    """DAB-DETR's decoder layer (official ``TransformerDecoderLayer``).

    Self-attention: content and position of queries and keys projected separately, then summed. Cross-attention:
    content and positional parts are projected separately and concatenated per head, so attention =
    content·content + position·position; the positional query is the anchor's sine embedding (scaled and
    width/height-modulated by the decoder). Only the first layer also adds the projected positional query and the
    projected image PE to the content query and key (``is_first``; ``keep_query_pos`` is off in the official runs).
    """

    def __init__(self, d: int, heads: int, d_ff: int, dropout: float = 0.0, act: str = "prelu",
                 is_first: bool = False):
        super().__init__()
        self.heads, self.dropout, self.is_first = heads, dropout, is_first
        self.sa_q_content, self.sa_q_pos = nn.Linear(d, d), nn.Linear(d, d)
        self.sa_k_content, self.sa_k_pos = nn.Linear(d, d), nn.Linear(d, d)
        self.sa_v, self.sa_out = nn.Linear(d, d), nn.Linear(d, d)
        self.ca_q_content, self.ca_q_sine = nn.Linear(d, d), nn.Linear(d, d)
        self.ca_q_pos = nn.Linear(d, d) if is_first else None
        self.ca_k_content, self.ca_k_pos = nn.Linear(d, d), nn.Linear(d, d)
        self.ca_v, self.ca_out = nn.Linear(d, d), nn.Linear(d, d)
        for out in (self.sa_out, self.ca_out):  # the official attention module zeroes its output bias
            nn.init.zeros_(out.bias)
        self.dropout1, self.dropout2 = nn.Dropout(dropout), nn.Dropout(dropout)
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.ffn = FeedForward(d, d_ff, dropout, act)

    def _split(self, x):  # B, N, d → B, heads, N, d_h
        b, n, d = x.shape
        return x.view(b, n, self.heads, d // self.heads).transpose(1, 2)

    def positional_parts(self, query_pos, query_sine, pos) -> tuple[torch.Tensor, torch.Tensor]:
        """The positional halves of the cross-attention query and key, per head concatenated as the layer does:
        (…, Q, 2d) and (…, HW, 2d), where each head's slice is [first-layer position term ‖ sine term]."""
        k_pos = self._split(self.ca_k_pos(pos))
        q_sine = self._split(self.ca_q_sine(query_sine))
        q_first = self._split(self.ca_q_pos(query_pos)) if self.is_first else torch.zeros_like(q_sine)
        k_first = k_pos if self.is_first else torch.zeros_like(k_pos)
        def join(first, second):
            return torch.cat([first, second], dim=-1).transpose(1, 2).flatten(2)
        return join(q_first, q_sine), join(k_first, k_pos)

    def forward(self, tgt, query_pos, query_sine, memory, pos, self_mask=None):
        p = self.dropout if self.training else 0.0
        need_weights = not self.training
        q = self._split(self.sa_q_content(tgt) + self.sa_q_pos(query_pos))
        k = self._split(self.sa_k_content(tgt) + self.sa_k_pos(query_pos))
        out, _ = attend(q, k, self._split(self.sa_v(tgt)), self_mask, p, need_weights=False)
        tgt = self.norm1(tgt + self.dropout1(self.sa_out(out)))

        q_content, k_content = self.ca_q_content(tgt), self.ca_k_content(memory)
        k_pos = self.ca_k_pos(pos.expand_as(memory))
        if self.is_first:
            q_content, k_content = q_content + self.ca_q_pos(query_pos), k_content + k_pos
        q = torch.cat([self._split(q_content), self._split(self.ca_q_sine(query_sine))], dim=-1)
        k = torch.cat([self._split(k_content), self._split(k_pos)], dim=-1)
        out, weights = attend(q, k, self._split(self.ca_v(memory)), None, p, need_weights)
        return self.ffn(self.norm2(tgt + self.dropout2(self.ca_out(out)))), weights
