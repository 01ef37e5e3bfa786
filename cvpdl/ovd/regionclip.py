"""RegionCLIP (Zhong et al., CVPR 2022): region–text pretraining of CLIP's visual encoder.

Region–concept pairs come from class-agnostic proposals × a concept pool parsed from the captions; the frozen
teacher CLIP pseudo-labels each proposal (softmax(cos / 0.01), kept if its max exceeds 0.1). The
student visual encoder, initialised from the teacher, learns RoIAlign region features with three losses:
region–concept contrastive, image–text contrastive (keeps the whole-image alignment) and KL distillation to the
teacher's region scores. Concept and caption embeddings come from the teacher's frozen text encoder.

Two choices are configurable because the digits world makes them matter (see the README):
``teacher_view`` — the paper's teacher scores pixel crops ("crop"); the tiny CLIP is near chance on crops, so the
default scores RoIAlign regions ("roi"). ``label_pool`` — the paper labels each region over the whole concept pool
("all"); the default ("caption") only allows the concepts parsed from the region's own image caption.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from cvpdl.checkpoint import Checkpoint
from cvpdl.data.captions import concept_pool, parse_concepts, prompt
from cvpdl.errors import UserInputError, check_finite
from cvpdl.ovd.clip_crop import ClipCrop
from cvpdl.ovd.clip_model import ClipEncoder
from cvpdl.ovd.clip_roi import ClipRoi, embed_regions_roi
from cvpdl.ovd.losses import distillation_kl, image_text_contrastive, region_concept_contrastive, same_caption_mask
from cvpdl.ovd.region_classifier import OvdContext


@dataclass(frozen=True)
class RegionClipConfig:
    epochs: int = 1
    images: int = 1500  # training images used (from the start of the training split)
    batch_size: int = 32
    lr: float = 1e-4
    regions_per_image: int = 6
    proposals: str = "localizer"  # or "random": RegionCLIP's random-box ablation
    teacher_view: str = "roi"  # or "crop" (the paper's teacher input)
    label_pool: str = "caption"  # or "all" (the paper's corpus-wide pool)
    temperature: float = 0.01  # teacher pseudo-label softmax(cos / T)
    keep_threshold: float = 0.1  # keep a pseudo-label when its max probability exceeds this
    weight_region: float = 1.0
    weight_image: float = 1.0
    weight_distill: float = 1.0
    image_scale: float = 2.0


def random_boxes(n: int, size: int, generator: torch.Generator, min_side: float = 8.0) -> np.ndarray:
    xy = torch.rand(n, 2, generator=generator) * (size - min_side)
    wh = min_side + torch.rand(n, 2, generator=generator) * (size / 2 - min_side)
    return torch.cat([xy, (xy + wh).clamp(max=size)], dim=1).numpy()


def pseudo_label(teacher_region_emb: torch.Tensor, concept_emb: torch.Tensor, temperature: float, threshold: float,
                 allowed: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Teacher logits (cos / T), argmax labels and the keep mask (max softmax probability > threshold).

    ``allowed`` (regions × concepts, bool) restricts each region's labels, e.g. to its caption's concepts;
    the returned logits stay unrestricted (they are the distillation target).
    """
    logits = teacher_region_emb @ concept_emb.T / temperature
    masked = logits if allowed is None else logits.masked_fill(~allowed, float("-inf"))
    confidence, labels = masked.softmax(dim=1).max(dim=1)
    return logits, labels, confidence > threshold


class RegionClip(ClipRoi):
    def __init__(self, cfg: RegionClipConfig):
        super().__init__(cfg.image_scale)
        for key, choices in (("proposals", ("localizer", "random")), ("teacher_view", ("roi", "crop")),
                             ("label_pool", ("caption", "all"))):
            if getattr(cfg, key) not in choices:
                raise UserInputError(f"regionclip.{key} must be one of {', '.join(choices)}; got {getattr(cfg, key)!r}")
        self.cfg = cfg
        self.student: ClipEncoder | None = None

    def encoder(self, ctx: OvdContext) -> ClipEncoder:
        return self.student or ctx.clip

    def _regions(self, ctx: OvdContext, n: int, generator: torch.Generator) -> list[np.ndarray]:
        k, size = self.cfg.regions_per_image, ctx.train.image(0).shape[0]
        if self.cfg.proposals == "random":
            return [random_boxes(k, size, generator) for _ in range(n)]
        return [boxes[:k] for boxes, _ in ctx.train_proposals[:n]]

    def _teacher_embeddings(self, ctx: OvdContext, images: np.ndarray, regions: list[np.ndarray]) -> torch.Tensor:
        if self.cfg.teacher_view == "crop":
            return ClipCrop().embed_regions(ctx, images, regions)
        return embed_regions_roi(ctx.clip, images, regions, self.cfg.image_scale, ctx.batch_size)

    def _allowed(self, captions: list[str], regions: list[np.ndarray], concepts: list[str]) -> torch.Tensor | None:
        if self.cfg.label_pool == "all":
            return None
        rows = []
        for caption, boxes in zip(captions, regions):
            named = set(parse_concepts(caption, concepts))
            rows += [[c in named for c in concepts]] * len(boxes)
        return torch.tensor(rows, dtype=torch.bool).reshape(-1, len(concepts))

    def fit(self, ctx: OvdContext, generator: torch.Generator, checkpoint: Checkpoint | None = None
            ) -> dict[str, list[float]]:
        cfg, teacher = self.cfg, ctx.clip
        n = min(cfg.images, len(ctx.train))
        images = np.stack([ctx.train.image(i) for i in range(n)])
        captions = ctx.train.captions[:n]
        regions = self._regions(ctx, n, generator)
        concepts = concept_pool(captions, ctx.class_names)
        with torch.no_grad():
            concept_emb = teacher.encode_text([prompt(c) for c in concepts])
            caption_emb = torch.cat([teacher.encode_text(captions[i:i + 512]) for i in range(0, n, 512)])
            teacher_emb = self._teacher_embeddings(ctx, images, regions).to(teacher.device)
        allowed = self._allowed(captions, regions, concepts)
        teacher_logits, labels, keep = pseudo_label(teacher_emb, concept_emb, cfg.temperature, cfg.keep_threshold,
                                                    None if allowed is None else allowed.to(teacher.device))
        offsets = np.cumsum([0] + [len(r) for r in regions])

        self.student = ClipEncoder(copy.deepcopy(teacher.model), teacher.tokenizer.context_length)
        model = self.student.model
        model.eval()  # frozen batch-norm statistics, as detectron2 fine-tuning does
        params = list(model.visual.parameters())
        for p in model.parameters():
            p.requires_grad_(False)
        for p in params:
            p.requires_grad_(True)
        optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=1e-4)
        steps = max(1, n // cfg.batch_size)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs * steps)
        scale = 1.0 / cfg.temperature
        history: dict[str, list[float]] = {"loss_region": [], "loss_image": [], "loss_distill": []}
        checkpoint, done = checkpoint or Checkpoint(None, "regionclip"), 0
        stateful = {"model": model, "optimizer": optimizer, "schedule": schedule}
        if (progress := checkpoint.restore(stateful, generator)) is not None:
            history, done = progress["history"], progress["epoch"]
        for epoch in tqdm(range(done + 1, cfg.epochs + 1), desc="RegionCLIP pretraining", unit="epoch", leave=False,
                          initial=done, total=cfg.epochs):
            order = torch.randperm(n, generator=generator).tolist()
            sums = dict.fromkeys(history, 0.0)
            for step in range(steps):
                idx = order[step * cfg.batch_size:(step + 1) * cfg.batch_size]
                rows = torch.as_tensor(np.concatenate([np.arange(offsets[i], offsets[i + 1]) for i in idx]),
                                       dtype=torch.long)
                region_emb = embed_regions_roi(self.student, images[idx], [regions[i] for i in idx],
                                               cfg.image_scale, len(idx))
                image_emb = self.student.encode_image(self.student.to_tensor(images[idx]))
                same = same_caption_mask([captions[i] for i in idx]).to(image_emb.device)
                kept = keep[rows]
                losses = {
                    "loss_region": region_concept_contrastive(region_emb[kept], concept_emb, labels[rows][kept],
                                                              scale) if kept.any() else region_emb.sum() * 0,
                    "loss_image": image_text_contrastive(image_emb, caption_emb[idx], model.logit_scale.exp(), same),
                    "loss_distill": distillation_kl(scale * region_emb @ concept_emb.T, teacher_logits[rows]),
                }
                total = (cfg.weight_region * losses["loss_region"] + cfg.weight_image * losses["loss_image"]
                         + cfg.weight_distill * losses["loss_distill"])
                check_finite(total, f"RegionCLIP pretraining epoch {epoch}, step {step + 1}")
                optimizer.zero_grad(set_to_none=True)
                total.backward()
                optimizer.step()
                schedule.step()
                for name, value in losses.items():
                    sums[name] += value.item() / steps
            for name in history:
                history[name].append(sums[name])
            checkpoint.save(stateful, generator, epoch=epoch, history=history)
        for p in model.parameters():
            p.requires_grad_(False)
        return history

