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
        self.feature_channels = cfg.widths[-1]
        self.embed = nn.Sequential(nn.Linear(cfg.widths[-1], cfg.embedding_dim), nn.BatchNorm1d(cfg.embedding_dim))
        self.classifier = nn.Linear(cfg.embedding_dim, num_classes)

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(x)

    def embedding(self, fmap: torch.Tensor) -> torch.Tensor:
        return self.embed(F.adaptive_avg_pool2d(fmap, 1).flatten(1))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        fmap = self.feature_map(x)
        emb = self.embedding(fmap)
        return {"feature_map": fmap, "embedding": emb, "logits": self.classifier(emb)}

    def local_logits(self, fmap: torch.Tensor, grid: int) -> torch.Tensor:
        """GLD: pool the final map into grid×grid regions and classify each with the network's own head
        (embedding + classifier) → (B, grid², classes)."""
        regions = F.adaptive_avg_pool2d(fmap, grid).flatten(2).transpose(1, 2)  # B, L, C
        b, cells, c = regions.shape
        emb = self.embed(regions.reshape(b * cells, c))
        return self.classifier(emb).reshape(b, cells, -1)
