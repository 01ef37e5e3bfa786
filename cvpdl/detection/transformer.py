"""Transformer pieces: the encoder (shared), DETR's decoder layer and DAB-DETR's conditional decoder layer.

Decoder layers return their cross-attention weights (B, heads, Q, HW) for the sparsity analysis in eval mode; in
training mode nothing reads them, so they return None and attention runs through the fused kernel.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


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
    def __init__(self, d: int, d_ff: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d, d_ff), nn.ReLU(inplace=True), nn.Linear(d_ff, d))
        self.norm = nn.LayerNorm(d)

    def forward(self, x):
        return self.norm(x + self.net(x))


class EncoderLayer(nn.Module):
    def __init__(self, d: int, heads: int, d_ff: int):
        super().__init__()
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.norm = nn.LayerNorm(d)
        self.ffn = FeedForward(d, d_ff)

    def forward(self, src, pos):
        q = src + pos
        return self.ffn(self.norm(src + self.attn(q, q, src, need_weights=False)[0]))


class DetrDecoderLayer(nn.Module):
    """Self-attention and cross-attention with the learned query position added to queries (DETR)."""

    def __init__(self, d: int, heads: int, d_ff: int):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.ffn = FeedForward(d, d_ff)

    def forward(self, tgt, query_pos, memory, pos, self_mask=None):
        q = tgt + query_pos
        tgt = self.norm1(tgt + self.self_attn(q, q, tgt, attn_mask=self_mask, need_weights=False)[0])
        out, weights = self.cross_attn(tgt + query_pos, memory + pos, memory, need_weights=not self.training,
                                       average_attn_weights=False)
        return self.ffn(self.norm2(tgt + out)), weights


class ConditionalDecoderLayer(nn.Module):
    """DAB-DETR: content and positional parts of queries and keys are projected separately and concatenated per
    head, so attention = content·content + position·position; the positional query is the anchor's sine
    embedding, scaled by a content-dependent transform and modulated by the anchor's width and height."""

    def __init__(self, d: int, heads: int, d_ff: int):
        super().__init__()
        self.heads = heads
        self.self_attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.q_content, self.q_pos = nn.Linear(d, d), nn.Linear(d, d)
        self.k_content, self.k_pos = nn.Linear(d, d), nn.Linear(d, d)
        self.v = nn.Linear(d, d)
        self.out = nn.Linear(d, d)
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.ffn = FeedForward(d, d_ff)

    def _split(self, x):  # B, N, d → B, heads, N, d_h
        b, n, d = x.shape
        return x.view(b, n, self.heads, d // self.heads).transpose(1, 2)

    def forward(self, tgt, query_pos, query_sine, memory, pos, self_mask=None):
        q = tgt + query_pos
        tgt = self.norm1(tgt + self.self_attn(q, q, tgt, attn_mask=self_mask, need_weights=False)[0])
        q = torch.cat([self._split(self.q_content(tgt)), self._split(self.q_pos(query_sine))], dim=-1)
        k = torch.cat([self._split(self.k_content(memory)), self._split(self.k_pos(pos.expand_as(memory)))], dim=-1)
        v = self._split(self.v(memory))
        if self.training:
            out, weights = F.scaled_dot_product_attention(q, k, v), None
        else:
            weights = (q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])).softmax(dim=-1)  # B, heads, Q, HW
            out = weights @ v
        return self.ffn(self.norm2(tgt + self.out(out.transpose(1, 2).flatten(2)))), weights
