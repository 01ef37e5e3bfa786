"""Classification metrics: top-k accuracy, optionally restricted to a subset of true classes."""
from __future__ import annotations

import torch


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, k: int = 1) -> float:
    """Fraction of rows whose true label is among the ``k`` highest logits (NaN for no rows)."""
    if len(labels) == 0:
        return float("nan")
    top = logits.topk(min(k, logits.shape[1]), dim=1).indices
    return (top == labels[:, None]).any(dim=1).float().mean().item()


def split_top1(logits: torch.Tensor, labels: torch.Tensor, novel_classes: list[int]) -> dict[str, float]:
    """Top-1 over all classes' logits, reported on base-labelled, novel-labelled and all rows."""
    is_novel = torch.isin(labels, torch.tensor(novel_classes, dtype=labels.dtype))
    return {"base": topk_accuracy(logits[~is_novel], labels[~is_novel]),
            "novel": topk_accuracy(logits[is_novel], labels[is_novel]),
            "all": topk_accuracy(logits, labels)}
