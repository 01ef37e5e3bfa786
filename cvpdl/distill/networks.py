"""Teacher and student classifiers: conv stages → feature map → GAP → embedding → linear classifier.

The embedding has the same width in teacher and student (as face-recognition embeddings do in Li et al.), so
embedding-level distillation needs no adapter; ``classify`` is shared by the global and the local (GLD) logits.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class NetConfig:
    widths: tuple[int, ...] = (32, 64, 128)
    blocks_per_stage: int = 2
    embedding_dim: int = 64


def _stage(cin: int, cout: int, blocks: int) -> nn.Sequential:
    layers = []
    for i in range(blocks):
        layers += [nn.Conv2d(cin if i == 0 else cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                   nn.ReLU(inplace=True)]
    return nn.Sequential(*layers, nn.MaxPool2d(2))


class ConvNet(nn.Module):
    def __init__(self, cfg: NetConfig, num_classes: int, in_channels: int = 3):
        super().__init__()
        widths = (in_channels, *cfg.widths)
        self.stages = nn.Sequential(*[_stage(widths[i], widths[i + 1], cfg.blocks_per_stage)
                                      for i in range(len(cfg.widths))])
        self.stage_channels = tuple(cfg.widths)
        self.feature_channels = cfg.widths[-1]
        self.embed = nn.Sequential(nn.Linear(cfg.widths[-1], cfg.embedding_dim), nn.BatchNorm1d(cfg.embedding_dim))
        self.classifier = nn.Linear(cfg.embedding_dim, num_classes)

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(x)

    def stage_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The output of every stage (post-ReLU and pooled), shallow to deep; the last is ``feature_map``."""
        maps = []
        for stage in self.stages:
            x = stage(x)
            maps.append(x)
        return maps

    def embedding(self, fmap: torch.Tensor) -> torch.Tensor:
        return self.embed(F.adaptive_avg_pool2d(fmap, 1).flatten(1))

    def forward(self, x: torch.Tensor, stage: int | None = None) -> dict[str, torch.Tensor]:
        """Final map, embedding and logits; with ``stage``, also that stage's output as ``stage_map`` (a hint)."""
        maps = self.stage_maps(x)
        fmap = maps[-1]
        emb = self.embedding(fmap)
        out = {"feature_map": fmap, "embedding": emb, "logits": self.classifier(emb)}
        if stage is not None:
            out["stage_map"] = maps[stage]
        return out

    def local_logits(self, fmap: torch.Tensor, grid: int) -> torch.Tensor:
        """GLD: pool the final map into grid×grid regions and classify each with the network's own head
        (embedding + classifier) → (B, grid², classes).

        The head's BatchNorm1d normalises the regions with the statistics the whole-image rows of this batch get
        (batch statistics in training, running ones in eval) and never updates its running statistics from them:
        region rows have another distribution and must neither shift the global path nor be normalised apart."""
        regions = F.adaptive_avg_pool2d(fmap, grid).flatten(2).transpose(1, 2)  # B, L, C
        b, cells, c = regions.shape
        linear, norm = self.embed
        hidden = linear(regions.reshape(b * cells, c))
        if norm.training:
            whole = linear(F.adaptive_avg_pool2d(fmap, 1).flatten(1))
            mean, var = whole.mean(dim=0), whole.var(dim=0, unbiased=False)
        else:
            mean, var = norm.running_mean, norm.running_var
        emb = (hidden - mean) / torch.sqrt(var + norm.eps) * norm.weight + norm.bias
        return self.classifier(emb).reshape(b, cells, -1)
